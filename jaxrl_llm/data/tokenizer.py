"""Tokenizers: one small protocol, a built-in character tokenizer, and a `tokenizer.json` wrapper.

Everything downstream (tasks, rollouts, trainers) talks to a tokenizer only through
`Tokenizer`: `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, the special ids
`pad_id`, `bos_id` (may be None: Qwen-style vocabularies have no BOS) and `eos_id`, and the one home
of the prompt / response layout:

- `encode_prompt(text)`: the ids a response is generated after. Plain layout: `[bos] + encode(text)`;
  chat layout (`HFTokenizer` with `chat=True`): the checkpoint's chat template rendered for
  `[system?, user: text]` with the generation prompt, tokenized as `transformers` does.
- `encode_response(text)`: the ids the model must emit. Plain: `encode(text) + [eos]`; chat: the text
  followed by the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...).
- `encode_messages(messages) -> (ids, loss_mask)`: a whole conversation; the mask is 1 on each assistant
  turn's content and its end-of-turn token.
- `stop_ids`: the ids that end a response (eos, the end-of-turn token, generation_config.json's eos ids).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Tokenizer", "CharTokenizer", "HFTokenizer", "CHAR_ALPHABET", "stop_ids_of", "check_messages"]


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

    @property
    def stop_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def encode_response(self, text: str) -> list[int]: ...

    def encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]: ...


def stop_ids_of(tokenizer: Any) -> tuple[int, ...]:
    """`tokenizer.stop_ids`, or `(tokenizer.eos_id,)` for an object with only the basic fields."""
    ids = getattr(tokenizer, "stop_ids", None)
    return tuple(ids) if ids is not None else (int(tokenizer.eos_id),)


def check_messages(messages: Any) -> None:
    """A conversation must be a non-empty list of `{"role": str, "content": str}` dicts."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts; got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be a dict with string 'role' and 'content'; got {m!r:.80}")


def _plain_messages(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    # The plain layout of a conversation: [bos] + every text in order, each assistant text followed by
    # eos and supervised; so [user, assistant] equals encode_prompt + encode_response.
    check_messages(messages)
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    mask = [0] * len(ids)
    for m in messages:
        if m["role"] == "assistant":
            part = tokenizer.encode_response(m["content"])
            mask += [1] * len(part)
        else:
            part = tokenizer.encode(m["content"])
            mask += [0] * len(part)
        ids += part
    return ids, mask


# Fixed order so that ids never depend on the environment (locale, Python version).
CHAR_ALPHABET: str = string.digits + string.ascii_letters + string.punctuation + " \n"

_CHAR_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")


class CharTokenizer:
    """One token per character over `CHAR_ALPHABET`, after three special tokens.

    Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, then `CHAR_ALPHABET[i]` = 3 + i (vocab_size 99).
    Characters outside the alphabet raise `ValueError` naming the character and its position:
    a silent `<unk>` would turn a wrong answer into a plausible one for a verifier.
    """

    def __init__(self, alphabet: str = CHAR_ALPHABET, *, chat: bool = False):
        if chat:
            raise ValueError("data.chat=True needs a Hugging Face tokenizer folder with a chat template; "
                             "the 'char' tokenizer has none (set data.tokenizer to a checkpoint folder)")
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

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    def encode_prompt(self, text: str) -> list[int]:
        """`[bos] + encode(text)`."""
        return self.encode(text, add_bos=True)

    def encode_response(self, text: str) -> list[int]:
        """`encode(text) + [eos]`."""
        return self.encode(text, add_eos=True)

    def encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        """`(ids, loss_mask)` of the plain layout: `[bos]`, then each text, assistant ones + `[eos]` (mask 1)."""
        return _plain_messages(self, messages)


# Tried in order when a special token is not named explicitly nor in tokenizer_config.json.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "[CLS]")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")

# Stands in for an assistant turn's content when locating it in a rendered conversation: no
# whitespace at its ends (templates `trim` content) and nothing a vocabulary treats as special.
_CONTENT_MARK = "@@jaxrl-llm-assistant-content-{}@@"


def _special_from_config(value) -> str | None:
    # tokenizer_config.json stores a special token either as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object; got {type(data).__name__}")
    return data


def _template_from_config(config: Mapping[str, Any], config_path: str) -> str | None:
    # A string, or (several templates) a list of {"name", "template"} whose "default" entry is the chat one.
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ValueError(f"{config_path}: chat_template lists templates {sorted(map(str, named))} but none named "
                         f"'default'; pass chat_template= explicitly")
    raise ValueError(f"{config_path}: chat_template must be a string or a list of {{name, template}}; "
                     f"got {type(value).__name__}")


def _generation_eos_ids(path: str) -> tuple[int, ...]:
    """generation_config.json's `eos_token_id` (an int or a list of ints); () when absent."""
    value = _read_json(path).get("eos_token_id")
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints; got {value!r}")
    return tuple(values)


def _register_added_tokens(raw, config: Mapping[str, Any], config_path: str) -> None:
    """Makes every `added_tokens_decoder` entry an added token of `raw` at its stated id, as transformers does.

    Tokens already registered by tokenizer.json are left alone; a content whose id disagrees fails.
    """
    from tokenizers import AddedToken

    entries = config.get("added_tokens_decoder") or {}
    if not isinstance(entries, Mapping):
        raise ValueError(f"{config_path}: added_tokens_decoder must be an object of id -> token")
    known = {t.content for t in raw.get_added_tokens_decoder().values()}
    for key, entry in entries.items():
        content = _special_from_config(entry)
        if not isinstance(content, str) or not str(key).isdigit():
            raise ValueError(f"{config_path}: added_tokens_decoder entry {key!r} must map an id to a token")
        want = int(key)
        if content not in known:
            flags = entry if isinstance(entry, Mapping) else {}
            special = bool(flags.get("special", True))
            token = AddedToken(content, special=special, single_word=bool(flags.get("single_word", False)),
                               lstrip=bool(flags.get("lstrip", False)), rstrip=bool(flags.get("rstrip", False)),
                               normalized=bool(flags.get("normalized", not special)))
            (raw.add_special_tokens if special else raw.add_tokens)([token])
        have = raw.token_to_id(content)
        if have != want:
            raise ValueError(f"{config_path}: added_tokens_decoder puts {content!r} at id {want} but the "
                             f"tokenizer.json vocabulary has it at {have}")


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the package protocol, with the checkpoint's chat template.

    `encode` adds no special tokens (prompts are framed by `encode_prompt`); `decode` skips special
    tokens by default. With `chat=True`, prompts, responses and conversations are laid out by the
    chat template (`jaxrl_llm.data.chat.render_chat`) and tokenized with added tokens recognised and
    no post-processor specials, which is what `transformers`' `apply_chat_template(tokenize=True)` gives.

    chat_template: the Jinja text (required for `chat=True`); system_prompt: a system message put
    before every chat prompt ("" = none); template_kwargs: further template variables (e.g.
    `{"enable_thinking": False}` for Qwen3); extra_stop_ids: more ids that end a response (e.g.
    generation_config.json's eos ids); template_source: names the template in errors.
    """

    def __init__(
        self,
        tokenizer,
        *,
        pad_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
        chat: bool = False,
        system_prompt: str = "",
        template_kwargs: Mapping[str, Any] | None = None,
        extra_stop_ids: Sequence[int] = (),
        template_source: str = "chat template",
    ):
        self._tok = tokenizer
        self._specials = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
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
        # The template sees the special tokens that are set, by their text (undefined otherwise).
        self._template_tokens = {name: self._tok.id_to_token(i) for name, i in
                                 (("bos_token", self._bos_id), ("eos_token", self._eos_id), ("pad_token", pad_id))
                                 if i is not None}
        if not isinstance(system_prompt, str):
            raise ValueError(f"data.system_prompt must be a string; got {type(system_prompt).__name__}")
        if system_prompt and not chat:
            raise ValueError("data.system_prompt is only used with data.chat=True "
                             "(the plain layout has no system turn)")
        self._template = chat_template
        self._template_source = template_source
        self._template_kwargs = dict(template_kwargs or {})
        self._system_prompt = system_prompt
        self._chat = bool(chat)
        self._turn_end = ""
        self._turn_end_ids: tuple[int, ...] = ()
        if self._chat:
            if not chat_template:
                raise ValueError(f"chat=True but {template_source} is empty; pass chat_template=")
            self._turn_end = self._derive_turn_end()
            self._turn_end_ids = tuple(i for i in self._encode_text(self._turn_end) if i in self._specials)
        stops = [self._eos_id, *self._turn_end_ids, *(int(i) for i in extra_stop_ids)]
        self._stop_ids = tuple(dict.fromkeys(stops))

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
        chat: bool = False,
        system_prompt: str = "",
        chat_template: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> HFTokenizer:
        """Loads a `tokenizer.json` (or a checkpoint folder holding one) and its sibling files.

        Special tokens come from the arguments, else from `tokenizer_config.json` (`pad_token`,
        `bos_token`, `eos_token`; `added_tokens_decoder` entries are registered as added tokens), else
        from common names such as `<|endoftext|>`. The chat template is `chat_template` (Jinja text or a
        file path), else the folder's `chat_template.jinja`, else tokenizer_config.json's `chat_template`
        (a string, or the "default" of a list). `generation_config.json`'s `eos_token_id` (int or list)
        joins `stop_ids`.
        """
        from tokenizers import Tokenizer as _RawTokenizer  # optional dependency: the `hf` extra

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"path must be a tokenizer.json file or a directory holding one; got {path!r}"
            )
        folder = os.path.dirname(path) or "."
        try:
            raw = _RawTokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a bare Exception for a malformed file
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        config_path = os.path.join(folder, "tokenizer_config.json")
        config: dict = {}
        if os.path.isfile(config_path):
            config = _read_json(config_path)
            pad_token = pad_token or _special_from_config(config.get("pad_token"))
            bos_token = bos_token or _special_from_config(config.get("bos_token"))
            eos_token = eos_token or _special_from_config(config.get("eos_token"))
            _register_added_tokens(raw, config, config_path)
        # The template is only compiled (and a syntax error raised) when chat is on: plain runs never render it.
        template, source = cls._find_template(chat_template, folder, config, config_path, check=chat)
        if chat and template is None:
            raise ValueError(f"data.chat=True but {folder} has no chat template (looked for chat_template.jinja "
                             f"and a chat_template entry in tokenizer_config.json)")
        gen_path = os.path.join(folder, "generation_config.json")
        extra = _generation_eos_ids(gen_path) if os.path.isfile(gen_path) else ()
        return cls(
            raw,
            pad_token=pad_token,
            bos_token=bos_token,
            eos_token=eos_token,
            chat_template=template,
            chat=chat,
            system_prompt=system_prompt,
            template_kwargs=template_kwargs,
            extra_stop_ids=extra,
            template_source=source,
        )

    @staticmethod
    def _find_template(explicit: str | None, folder: str, config: Mapping[str, Any], config_path: str, *,
                       check: bool) -> tuple[str | None, str]:
        from jaxrl_llm.data.chat import compile_chat_template

        if explicit is not None and os.path.isfile(explicit):
            with open(explicit, encoding="utf-8") as f:
                template, source = f.read(), explicit
        elif explicit is not None:
            template, source = explicit, "the chat_template argument"
        elif os.path.isfile(os.path.join(folder, "chat_template.jinja")):
            source = os.path.join(folder, "chat_template.jinja")  # transformers 5 saves the template here
            with open(source, encoding="utf-8") as f:
                template = f.read()
        else:
            template, source = _template_from_config(config, config_path), f"{config_path} (chat_template)"
        if template is not None and check:
            compile_chat_template(template, source=source)  # a syntax error fails at load, naming the file
        return template, source

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

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """eos, then the chat end-of-turn token(s) (chat only), then generation_config.json's eos ids."""
        return self._stop_ids

    @property
    def chat(self) -> bool:
        return self._chat

    @property
    def chat_template(self) -> str | None:
        return self._template

    @property
    def turn_end(self) -> str:
        """The text the template puts after an assistant turn's content, up to its end-of-turn token ("" off chat)."""
        return self._turn_end

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Maps `text` to ids without the tokenizer's post-processor specials."""
        ids = self._encode_text(text)
        if add_bos:
            if self._bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos token")
            ids = [self._bos_id] + ids
        if add_eos:
            ids.append(self._eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def _encode_text(self, text: str) -> list[int]:
        # Added tokens in `text` (e.g. <|im_start|>) are recognised; the post-processor's are not added.
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _with_system(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return ([{"role": "system", "content": self._system_prompt}] if self._system_prompt else []) + messages

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
        """The chat template rendered for `messages` (with this tokenizer's special tokens and template kwargs)."""
        from jaxrl_llm.data.chat import render_chat

        if self._template is None:
            raise ValueError("this tokenizer has no chat template")
        kwargs = {**self._template_tokens, **self._template_kwargs}
        bos, eos = kwargs.pop("bos_token", None), kwargs.pop("eos_token", None)
        return render_chat(self._template, messages, add_generation_prompt=add_generation_prompt, bos_token=bos,
                           eos_token=eos, source=self._template_source, **kwargs)

    def _derive_turn_end(self) -> str:
        # What the template writes after an assistant turn's content, up to and including the first
        # special token there: <|im_end|> for ChatML (Qwen), <|eot_id|> for Llama 3.
        mark = _CONTENT_MARK.format(0)
        text = self.render(self._with_system([{"role": "user", "content": "1+1"},
                                              {"role": "assistant", "content": mark}]), add_generation_prompt=False)
        if text.count(mark) != 1:
            raise ValueError(f"{self._template_source}: the template does not render an assistant turn's content "
                             f"verbatim, so its end-of-turn token cannot be found")
        after = text[text.index(mark) + len(mark):]
        end = self._first_special_end(after)
        if end is None:
            raise ValueError(f"{self._template_source}: no special token follows an assistant turn's content "
                             f"(rendered {after[:40]!r}), so responses have no end-of-turn token to stop on")
        return after[:end]

    def _first_special_end(self, text: str) -> int | None:
        """End offset of the first special token in `text` (None if there is none)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        for token, (_, stop) in zip(enc.ids, enc.offsets):
            if token in self._specials:
                return stop
        return None

    def encode_prompt(self, text: str) -> list[int]:
        """Plain: `[bos] + encode(text)`. Chat: the template for `[system?, user: text]` + generation prompt."""
        if not self._chat:
            return ([] if self._bos_id is None else [self._bos_id]) + self._encode_text(text)
        return self._encode_text(self.render(self._with_system([{"role": "user", "content": text}]),
                                             add_generation_prompt=True))

    def encode_response(self, text: str) -> list[int]:
        """Plain: `encode(text) + [eos]`. Chat: `text` then the template's end-of-turn token (`turn_end`)."""
        if not self._chat:
            return self._encode_text(text) + [self._eos_id]
        return self._encode_text(text + self._turn_end)

    def encode_messages(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        """`(ids, loss_mask)` of a whole conversation, both `[L]`.

        Chat: ids are `apply_chat_template(messages, tokenize=True)`'s (no generation prompt, no
        system prompt added); the mask is 1 on the tokens of each assistant turn's content and of the
        text after it up to its end-of-turn token. Plain: see `_plain_messages`.
        """
        if not self._chat:
            return _plain_messages(self, messages)
        check_messages(messages)
        messages = [dict(m) for m in messages]
        text = self.render(messages, add_generation_prompt=False)
        spans = self._assistant_spans(messages, text)
        enc = self._tok.encode(text, add_special_tokens=False)
        # A token is supervised when it overlaps a span (a merge across a span edge keeps its token).
        mask = [int(any(a < hi and b > lo for lo, hi in spans)) for a, b in enc.offsets]
        return list(enc.ids), mask

    def _assistant_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of each assistant turn's content + end-of-turn in rendered `text`.

        The conversation is rendered again with each assistant content replaced by a marker; the text
        between the markers fixes where each content sits in `text`.
        """
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise ValueError("messages hold no assistant turn, so nothing would be supervised")
        marked = list(messages)
        for k, i in enumerate(turns):
            marked[i] = dict(messages[i], content=_CONTENT_MARK.format(k))
        pieces = [self.render(marked, add_generation_prompt=False)]
        for k in range(len(turns)):
            head, sep, rest = pieces[-1].partition(_CONTENT_MARK.format(k))
            if not sep:
                raise ValueError(f"{self._template_source}: assistant turn {k + 1} is not rendered (the template "
                                 f"drops it), so it cannot be supervised")
            pieces[-1:] = [head, rest]
        if not text.startswith(pieces[0]):
            raise ValueError(self._misaligned(1))
        spans, cursor = [], len(pieces[0])
        for k, after in enumerate(pieces[1:]):
            last = k == len(turns) - 1
            end = len(text) - len(after) if last else text.find(after, cursor)
            if end < cursor or (last and not text.endswith(after)):
                raise ValueError(self._misaligned(k + 1))
            close = self._first_special_end(after)
            if close is None:
                raise ValueError(f"{self._template_source}: no end-of-turn special token after assistant turn "
                                 f"{k + 1}")
            spans.append((cursor, end + close))
            cursor = end + len(after)
        return spans

    def _misaligned(self, turn: int) -> str:
        return (f"{self._template_source}: assistant turn {turn}'s content changes how the template renders the "
                f"rest of the conversation (e.g. a <think> block inside content), so its tokens cannot be located; "
                f"pass reasoning as the message's 'reasoning_content' instead")
