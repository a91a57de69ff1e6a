"""A word-level tokenizer built from a task's own texts (`data.tokenizer = "word"`).

Text environments speak a small closed vocabulary ("go to cabinet 1", "click[P037]"): one token per
word instead of one per character makes a turn prompt about 4x shorter, which is what makes
multi-turn RL fit a CPU. The tokenizer is a `tokenizers` WordLevel model (the maintained library
does the splitting, lookup and decoding) behind `HFTokenizer`, the package's wrapper:

- pieces: a word with its leading space (" fridge"), a punctuation mark with its leading space,
  or a run of whitespace (regex `\\s?\\w+|\\s?[^\\w\\s]|\\s+`), so decoding is plain concatenation and
  `decode(encode(text)) == text` for text made of known pieces;
- ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then the corpus pieces by decreasing count (ties
  in lexicographic order), so the same texts always give the same ids;
- an unknown piece maps to `<unk>` (dropped when decoding).

The vocabulary is a pure function of the texts: the warm-up, the RL run and a resumed run that build
it from the same task get the same ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from jaxrl_llm.data.tokenizer import HFTokenizer

__all__ = ["PIECE_PATTERN", "SPECIAL_TOKENS", "word_pieces", "word_tokenizer"]

PIECE_PATTERN = r"\s?\w+|\s?[^\w\s]|\s+"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def word_pieces(text: str) -> list[str]:
    """The pieces `text` splits into (module docstring), in order; `"".join` gives `text` back."""
    import re

    return re.findall(PIECE_PATTERN, text)


def word_tokenizer(texts: Iterable[str], *, max_size: int = 0) -> HFTokenizer:
    """An `HFTokenizer` over the pieces of `texts` (module docstring).

    max_size: keep at most this many ids, specials included (the most frequent pieces); 0 = all.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    counts = Counter(p for t in texts for p in word_pieces(t))
    for s in SPECIAL_TOKENS:
        counts.pop(s, None)
    pieces = sorted(counts, key=lambda p: (-counts[p], p))
    if max_size:
        if max_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"word tokenizer max_size must exceed the {len(SPECIAL_TOKENS)} special tokens; "
                             f"got {max_size}")
        pieces = pieces[:max_size - len(SPECIAL_TOKENS)]
    vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *pieces))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL_TOKENS])
    return HFTokenizer(tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
