"""Tiny Hugging Face checkpoints (tokenizer + chat template + random model) built locally for tests.

`make_hf_checkpoint(path, family)` writes, for family "qwen2" (Qwen2.5-Instruct), "qwen3" or
"llama" (Llama-3.1-Instruct):

- `tokenizer.json`: a byte-level BPE trained on a few hundred arithmetic / math-answer strings, with
  the family's pre-tokenizer pipeline and its real special tokens appended after the BPE vocabulary
  (as in the released vocabularies, where they sit at the end);
- `tokenizer_config.json`: the family's special-token fields and its real chat template (the text
  under tests/fixtures/chat_templates/);
- `config.json` + `model.safetensors`: a random `Qwen2ForCausalLM` / `Qwen3ForCausalLM` /
  `LlamaForCausalLM` (hidden 64, 2 layers, 4 heads, 2 kv heads, vocab = tokenizer size rounded up to
  a multiple of 64);
- `generation_config.json` with the family's list of eos ids (written with or without the model).

Tokenizer files need only `tokenizers`; the model files need `torch` + `transformers` (skipped with
`with_model=False`). Builds are cached per (family, vocab_size, seed, with_model) and copied into `path`.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

TEMPLATES_DIR = Path(__file__).parent / "fixtures" / "chat_templates"

# The pre-tokenizer regexes of the released tokenizer.json files.
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

FAMILIES: dict[str, dict] = {
    "qwen2": {
        "template": "qwen2_5.jinja",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "plain_added": [],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
        "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        "tokenizer_class": "Qwen2Tokenizer",
        "model_class": "Qwen2ForCausalLM", "config_class": "Qwen2Config",
    },
    "qwen3": {
        "template": "qwen3.jinja",
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        # Qwen3 ships the thinking markers as added, non-special tokens.
        "plain_added": ["<think>", "</think>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
        "generation_eos": ["<|im_end|>", "<|endoftext|>"],
        "tokenizer_class": "Qwen2Tokenizer",
        "model_class": "Qwen3ForCausalLM", "config_class": "Qwen3Config",
    },
    "llama": {
        "template": "llama3.jinja",
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eom_id|>", "<|eot_id|>"],
        "plain_added": [],
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None,
        "generation_eos": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_class": "LlamaForCausalLM", "config_class": "LlamaConfig",
    },
}

_CACHE: dict[tuple, Path] = {}


@atexit.register
def _clear_cache() -> None:
    for path in _CACHE.values():
        shutil.rmtree(path, ignore_errors=True)


def chat_template(family: str) -> str:
    """The family's chat template text, byte for byte."""
    return (TEMPLATES_DIR / FAMILIES[family]["template"]).read_text(encoding="utf-8")


def training_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """`n` short arithmetic / answer-format strings (digits, math words, `#### 42`, `\\boxed{}`)."""
    rng = random.Random(seed)
    words = ["the", "answer", "is", "sum", "of", "and", "plus", "minus", "times", "total", "Let", "us",
             "compute", "so", "We", "have", "step", "first", "then", "Question", "What", "Solve",
             "Please", "reason", "put", "your", "final", "within", "equals", "number"]
    out = []
    for i in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        op, res = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        phrase = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        out.append([f"{a}{op}{b}={res}", f"{phrase} {a} {op} {b}?", f"{phrase}.\n#### {res}",
                    f"The answer is \\boxed{{{res}}}.", f"What is {a} {op} {b}? {phrase}\n"][i % 5])
    return out


def _build_tokenizer(family: str, vocab_size: int, seed: int):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)

    spec = FAMILIES[family]
    raw = Tokenizer(models.BPE())
    split = _LLAMA_SPLIT if family == "llama" else _QWEN_SPLIT
    if family != "llama":
        raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(training_corpus(seed), trainer=trainer)
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"]])
    if spec["plain_added"]:
        raw.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["plain_added"]])
    if family == "llama":
        # Llama 3's tokenizer.json prepends <|begin_of_text|> in its post-processor: what a chat template
        # must not get twice.
        bos = spec["bos"]
        raw.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, raw.token_to_id(bos))]),
        ])
    else:
        raw.post_processor = processors.ByteLevel(trim_offsets=False)
    return raw


def _tokenizer_config(family: str, raw) -> dict:
    spec = FAMILIES[family]
    added = {}
    for t in spec["specials"] + spec["plain_added"]:
        added[str(raw.token_to_id(t))] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": t in spec["specials"]}
    config = {
        "added_tokens_decoder": added,
        "bos_token": spec["bos"],
        "eos_token": spec["eos"],
        "pad_token": spec["pad"],
        "chat_template": chat_template(family),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "tokenizer_class": spec["tokenizer_class"],
    }
    if family != "llama":
        config.update({"add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
                       "unk_token": None, "add_bos_token": False})
    return config


def _write_model(family: str, raw, out: Path, seed: int) -> None:
    import torch
    import transformers

    spec = FAMILIES[family]
    vocab = -(-raw.get_vocab_size(with_added_tokens=True) // 64) * 64
    bos_id = raw.token_to_id(spec["bos"] or spec["pad"])
    eos_ids = [raw.token_to_id(t) for t in spec["generation_eos"]]
    config = getattr(transformers, spec["config_class"])(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=family != "llama",
        bos_token_id=bos_id, eos_token_id=eos_ids[0] if family != "llama" else eos_ids)
    torch.manual_seed(seed)
    model = getattr(transformers, spec["model_class"])(config).eval()
    model.save_pretrained(out)
    _write_generation_config(family, raw, out)  # save_pretrained wrote its own; the released files list all eos


def _write_generation_config(family: str, raw, out: Path) -> None:
    spec = FAMILIES[family]
    generation = {"bos_token_id": raw.token_to_id(spec["bos"] or spec["pad"]), "do_sample": False,
                  "eos_token_id": [raw.token_to_id(t) for t in spec["generation_eos"]]}
    if spec["pad"] is not None:
        generation["pad_token_id"] = raw.token_to_id(spec["pad"])
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def _build(family: str, vocab_size: int, seed: int, with_model: bool) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"hf_tiny_{family}_"))
    raw = _build_tokenizer(family, vocab_size, seed)
    raw.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(family, raw), indent=2))
    if with_model:
        _write_model(family, raw, out, seed)
    else:
        _write_generation_config(family, raw, out)
    return out


def make_hf_checkpoint(path: str | os.PathLike, family: str, *, vocab_size: int = 384, seed: int = 0,
                       with_model: bool = True) -> Path:
    """Writes the tiny `family` checkpoint into `path` (created if missing) and returns it."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {family!r}")
    key = (family, vocab_size, seed, with_model)
    if key not in _CACHE:
        _CACHE[key] = _build(family, vocab_size, seed, with_model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in _CACHE[key].iterdir():
        shutil.copy2(f, path / f.name)
    return path
