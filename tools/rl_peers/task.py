"""The RL-step benchmark's task, shared by every framework: vocabulary, prompts and reward.

Token ids and words are one and the same: id 0 is `<pad>`, id 1 is `<eos>`, and every other id `i`
is the word " w<i>" (leading space), so decoding is concatenation and a completion's text names
its token ids. The tokenizer is a `tokenizers` WordLevel model saved as a `tokenizer.json` with
the `tokenizer_config.json` that `transformers.PreTrainedTokenizerFast.from_pretrained` and
`jaxrl_llm.data.tokenizer.HFTokenizer.from_file` read. It has no bos token, so a prompt of
`prompt_len` words is `prompt_len` token ids in all three frameworks.

The reward (`even_id_fraction`) is the share of even ids among a completion's words: cheap, the
same in every framework, and a function of the sampled ids alone.
"""

from __future__ import annotations

import json
import os
import re

PAD, EOS = "<pad>", "<eos>"
SPECIAL_TOKENS = (PAD, EOS)
FIRST_WORD_ID = len(SPECIAL_TOKENS)
_WORD = re.compile(r"w(\d+)")


def word(token_id: int) -> str:
    """The piece of a non-special id: " w<id>"."""
    return f" w{int(token_id)}"


def check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= FIRST_WORD_ID + 1:
        raise ValueError(f"vocab_size must be an int > {FIRST_WORD_ID + 1} (the special tokens and two words); "
                         f"got {vocab_size!r}")


def write_tokenizer(folder: str, vocab_size: int) -> str:
    """Write the benchmark's `vocab_size`-id word-level tokenizer into `folder`; returns the folder.

    Files: `tokenizer.json` (the `tokenizers` model), `tokenizer_config.json` and
    `special_tokens_map.json` (pad and eos named, no bos, `PreTrainedTokenizerFast`).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )

    check_vocab_size(vocab_size)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({word(i): i for i in range(FIRST_WORD_ID, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^ ]+"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL_TOKENS])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    specials = {"pad_token": PAD, "eos_token": EOS}
    config = {**specials, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20,
              "padding_side": "left", "clean_up_tokenization_spaces": False,
              "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                                "normalized": False, "single_word": False}
                                       for i, t in enumerate(SPECIAL_TOKENS)}}
    for name, payload in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
    return folder


def prompt_ids(rng, length: int, vocab_size: int) -> list[int]:
    """`length` word ids drawn uniformly from `rng` (a `numpy.random.Generator`)."""
    if length < 1:
        raise ValueError(f"prompt length must be >= 1; got {length}")
    return [int(i) for i in rng.integers(FIRST_WORD_ID, vocab_size, size=length)]


def prompt_text(ids) -> str:
    """The text whose tokens are exactly `ids` (word ids)."""
    return "".join(word(i) for i in ids)


def benchmark_prompts(count: int, length: int, vocab_size: int, seed: int) -> list[str]:
    """`count` prompt texts of `length` words each, deterministic in `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [prompt_text(prompt_ids(rng, length, vocab_size)) for _ in range(count)]


def even_id_fraction(text: str) -> float:
    """The reward: the share of words in `text` whose id is even (0.0 for a text without words)."""
    ids = [int(m) for m in _WORD.findall(text)]
    return sum(1 for i in ids if i % 2 == 0) / len(ids) if ids else 0.0
