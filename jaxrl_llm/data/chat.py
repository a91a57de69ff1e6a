"""Hugging Face chat templates rendered with Jinja, in the environment `transformers` renders them in.

A checkpoint's `chat_template` (tokenizer_config.json or chat_template.jinja) is untrusted Jinja
code; it runs in an `ImmutableSandboxedEnvironment` with `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, a `tojson` filter that keeps non-ASCII text and takes `indent` /
`separators` / `sort_keys`, and the globals templates call: `raise_exception(message)`,
`strftime_now(format)`, a `namespace` that refuses underscore attributes, and `dict`. The
`{% generation %}` block some templates use to mark assistant text renders its body unchanged.

    text = render_chat(template, [{"role": "user", "content": "1+1?"}], add_generation_prompt=True,
                       bos_token=None, eos_token="<|im_end|>")
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["render_chat", "compile_chat_template", "ChatTemplateError"]


class ChatTemplateError(ValueError):
    """A chat template that does not parse, or that raised while rendering."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes `<`, `>`, `&` and `'`, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` without underscore attributes (a route to interpreter internals)."""

    def __init__(*args, **kwargs):  # first positional is self, as in jinja2.utils.Namespace
        self, rest = args[0], args[1:]
        for key in dict(*rest, **kwargs):
            _Namespace._check(key)
        jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

    def __setitem__(self, key, value):
        _Namespace._check(key)
        jinja2.utils.Namespace.__setitem__(self, key, value)

    @staticmethod
    def _check(key):
        if isinstance(key, str) and key.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates may not set namespace attribute {key!r}")


class _Dict:
    """`dict(...)` / `dict.fromkeys(...)` for templates, without exposing the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace,
                       dict=_Dict())
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def compile_chat_template(template: str, *, source: str = "chat template") -> jinja2.Template:
    """The compiled template (cached by text); a syntax error raises `ChatTemplateError` naming `source`."""
    if not isinstance(template, str) or not template:
        raise ChatTemplateError(f"{source}: a chat template must be a non-empty string; got {template!r}")
    try:
        return _compile(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"{source}: chat template syntax error at line {e.lineno}: {e.message}") from None


def _plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Keys set to None are dropped, as `transformers` does: templates test `is defined`, not `is none`.
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"message {i} must be a mapping with 'role' and 'content'; got {type(m).__name__}")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    bos_token: str | None,
    eos_token: str | None,
    source: str = "chat template",
    **extra: Any,
) -> str:
    """`template` rendered for `messages`, as `transformers`' `apply_chat_template(..., tokenize=False)`.

    `extra` are further template variables (`enable_thinking`, `tools`, `date_string`, `pad_token`, ...);
    `tools` and `documents` default to None as there. Errors raise `ChatTemplateError` naming `source`.
    """
    compiled = compile_chat_template(template, source=source)
    variables = {"tools": None, "documents": None}
    variables.update({k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None})
    variables.update(extra)
    try:
        return compiled.render(messages=_plain_messages(messages), add_generation_prompt=add_generation_prompt,
                               **variables)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"{source}: the chat template failed: {e}") from None
