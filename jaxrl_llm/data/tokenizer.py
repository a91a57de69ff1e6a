"""Tokenizers: one small protocol, a built-in character tokenizer, and a `tokenizer.json` wrapper.

Everything downstream (tasks, rollouts, trainers) talks to a tokenizer only through
`Tokenizer`: `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, and the special ids
`pad_id`, `bos_id` (may be None: Qwen-style vocabularies have no BOS) and `eos_id`.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer", "CharTokenizer", "HFTokenizer", "CHAR_ALPHABET"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the package needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


# Fixed order so that ids never depend on the environment (locale, Python version).
CHAR_ALPHABET: str = string.digits + string.ascii_letters + string.punctuation + " \n"

_CHAR_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")


class CharTokenizer:
    """One token per character over `CHAR_ALPHABET`, after three special tokens.

    Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, then `CHAR_ALPHABET[i]` = 3 + i (vocab_size 99).
    Characters outside the alphabet raise `ValueError` naming the character and its position:
    a silent `<unk>` would turn a wrong answer into a plausible one for a verifier.
    """

    def __init__(self, alphabet: str = CHAR_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet must not repeat characters")
        self._alphabet = alphabet
        offset = len(_CHAR_SPECIALS)
        self._char_to_id = {c: offset + i for i, c in enumerate(alphabet)}
        self._id_to_char = {i: c for c, i in self._char_to_id.items()}

    @property
    def vocab_size(self) -> int:
        return len(_CHAR_SPECIALS) + len(self._alphabet)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.bos_id, self.eos_id)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Maps `text` to ids, optionally framed by `<bos>` / `<eos>`."""
        ids = [self.bos_id] if add_bos else []
        for pos, ch in enumerate(text):
            token = self._char_to_id.get(ch)
            if token is None:
                raise ValueError(
                    f"CharTokenizer cannot encode character {ch!r} (U+{ord(ch):04X}) at position "
                    f"{pos}; the alphabet is digits, ASCII letters, punctuation, space and newline"
                )
            ids.append(token)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Maps ids back to text; special ids are dropped (or rendered as `<pad>` etc.)."""
        out = []
        for i in ids:
            i = int(i)
            if i < len(_CHAR_SPECIALS) and i >= 0:
                if not skip_special:
                    out.append(_CHAR_SPECIALS[i])
                continue
            ch = self._id_to_char.get(i)
            if ch is None:
                raise ValueError(
                    f"id {i} is outside the CharTokenizer vocabulary [0, {self.vocab_size})"
                )
            out.append(ch)
        return "".join(out)


# Tried in order when a special token is not named explicitly nor in tokenizer_config.json.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "[CLS]")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")


def _special_from_config(value) -> str | None:
    # tokenizer_config.json stores a special token either as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the package protocol.

    `encode` adds no special tokens (prompts are framed explicitly by the caller); `decode` skips
    special tokens by default.
    """

    def __init__(
        self,
        tokenizer,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ):
        self._tok = tokenizer
        self._eos_id = self._resolve("eos_token", eos_token, _EOS_CANDIDATES)
        if self._eos_id is None:
            raise ValueError(
                "eos_token could not be found in the vocabulary; pass eos_token= explicitly "
                f"(tried {_EOS_CANDIDATES})"
            )
        self._bos_id = self._resolve("bos_token", bos_token, _BOS_CANDIDATES)
        pad_id = self._resolve("pad_token", pad_token, _PAD_CANDIDATES)
        # Decoder-only vocabularies often ship without a pad token; padding is always masked, so the
        # EOS id is a safe stand-in.
        self._pad_id = self._eos_id if pad_id is None else pad_id

    def _resolve(self, field: str, token: str | None, candidates: Sequence[str]) -> int | None:
        if token is not None:
            token_id = self._tok.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{field} {token!r} is not in the tokenizer vocabulary")
            return token_id
        for cand in candidates:
            token_id = self._tok.token_to_id(cand)
            if token_id is not None:
                return token_id
        return None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> HFTokenizer:
        """Loads a `tokenizer.json` (or a directory holding one).

        Special tokens come from the arguments, else from a sibling `tokenizer_config.json`
        (`pad_token`, `bos_token`, `eos_token`), else from common names such as `<|endoftext|>`.
        """
        from tokenizers import Tokenizer as _RawTokenizer  # optional dependency: the `hf` extra

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"path must be a tokenizer.json file or a directory holding one; got {path!r}"
            )
        config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{config_path}: not valid JSON ({e})") from None
            pad_token = pad_token or _special_from_config(config.get("pad_token"))
            bos_token = bos_token or _special_from_config(config.get("bos_token"))
            eos_token = eos_token or _special_from_config(config.get("eos_token"))
        try:
            raw = _RawTokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a bare Exception for a malformed file
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(
            raw,
            pad_token=pad_token,
            bos_token=bos_token,
            eos_token=eos_token,
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Maps `text` to ids without the tokenizer's post-processor specials."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos:
            if self._bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos token")
            ids = [self._bos_id] + ids
        if add_eos:
            ids.append(self._eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)
