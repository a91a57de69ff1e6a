"""Math answer extraction and checking.

Extraction: the content of the last `\\boxed{...}` (nested braces allowed), else the last number
in the text (integers, decimals, `1,234` thousands, `a/b`, `\\frac{a}{b}`, negatives).

Normalisation: LaTeX spacing, `$`, `\\left`/`\\right`, `\\text{}`, units like `%` and a leading
`x =` are removed; numbers become exact fractions, so `"1,000"`, `"1000.0"`, `"2000/2"` and
`"\\frac{2000}{2}"` are all `"1000"`, and `"0.5"` equals `"1/2"`. Non-numeric answers compare as
normalised strings.

Verifiers (`check_answer(..., verifier=)`): "builtin" is the above (no dependencies); "math_verify"
is Hugging Face's `math-verify` (LaTeX to SymPy: sets, intervals, roots, symbolic equality; `pip
install math-verify`); "auto" (the default) uses math-verify when it is importable, else the
built-in checker. docs/envs.md has their agreement on `tests/fixtures/math_answers.jsonl`.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any

__all__ = [
    "extract_boxed",
    "extract_final_number",
    "extract_answer",
    "normalize_answer",
    "parse_number",
    "answers_match",
    "check_answer",
    "VERIFIERS",
    "resolve_verifier",
    "math_verify_check",
]

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


def _last_command_start(text: str) -> tuple[int, str] | None:
    best = None
    for cmd in _BOXED_COMMANDS:
        pos = text.rfind(cmd)
        if pos >= 0 and (best is None or pos > best[0]):
            best = (pos, cmd)
    return best


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (braces may nest), or None.

    `\\boxed 42` (no braces) gives the next whitespace-delimited token. Unbalanced braces give
    None rather than a truncated answer.
    """
    found = _last_command_start(text)
    if found is None:
        return None
    pos, cmd = found
    i = pos + len(cmd)
    if text.startswith(" ", i) and not text[i:].lstrip().startswith("{"):
        token = text[i:].split()
        return token[0].rstrip("$.") if token else None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_NUMBER = re.compile(
    r"\\[dt]?frac\{\s*-?\d+(?:\.\d+)?\s*\}\{\s*-?\d+(?:\.\d+)?\s*\}"  # \frac{a}{b}
    r"|-?\d+(?:\.\d+)?/\d+(?:\.\d+)?"  # a/b
    r"|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?"  # 1,234,567.5
    r"|-?\d+(?:\.\d+)?"  # 42, -3.25
    r"|-?\.\d+"  # .5
)


def extract_final_number(text: str) -> str | None:
    """The last number written in `text` (as written), or None."""
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


def extract_answer(text: str) -> str | None:
    """The boxed answer if there is one, else the final number, else None."""
    boxed = extract_boxed(text)
    return boxed if boxed is not None else extract_final_number(text)


_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\w*=(?!=)")
_PAREN_FRAC = re.compile(r"(-?)\(([^()]*)\)/\(([^()]*)\)")


def parse_number(s: str) -> Fraction | None:
    """Exact value of a plain numeric string (`-3`, `2.50`, `1,000`, `3/4`, `-1.5/2`), else None."""
    s = s.strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer: exact-fraction form for numbers, cleaned text otherwise."""
    s = answer.strip().replace("\u2212", "-")  # unicode minus sign
    s = _TEXT.sub(r"\1", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "$", "\\%", "%", "^\\circ",
                  "^{\\circ}", "\\displaystyle"):
        s = s.replace(token, "")
    s = _FRAC.sub(r"(\1)/(\2)", s)
    s = "".join(s.split())
    s = _ASSIGNMENT.sub("", s)
    s = s.rstrip(".")
    value = parse_number(s)
    # (a)/(b) from \frac is numeric when a and b are
    simple_frac = _PAREN_FRAC.fullmatch(s)
    if value is None and simple_frac:
        num, den = parse_number(simple_frac.group(2)), parse_number(simple_frac.group(3))
        if num is not None and den:
            value = num / den * (-1 if simple_frac.group(1) else 1)
    return s if value is None else str(value)


def answers_match(predicted: str | None, reference: str) -> bool:
    """True iff the two answers are equal after `normalize_answer` (numbers compared exactly)."""
    if predicted is None:
        return False
    return normalize_answer(predicted) == normalize_answer(reference)


VERIFIERS: tuple[str, ...] = ("auto", "math_verify", "builtin")
_MATH_VERIFY_TIMEOUT_S = 5  # per parse / per comparison; a timed-out check counts as wrong


def _math_verify() -> Any | None:
    """The `math_verify` module, or None when it is not installed."""
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def resolve_verifier(verifier: str) -> str:
    """`"math_verify"` or `"builtin"` for a `VERIFIERS` name; "math_verify" requires the package."""
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier must be one of {VERIFIERS}; got {verifier!r}")
    if verifier == "builtin":
        return "builtin"
    if _math_verify() is None:
        if verifier == "math_verify":
            raise ImportError("verifier='math_verify' needs the math-verify package: pip install math-verify "
                              "(or the jaxrl_llm[math] extra); verifier='builtin' needs nothing")
        return "builtin"
    return "math_verify"


@functools.lru_cache(maxsize=4096)
def _parsed_reference(reference: str, timeout_s: int | None) -> tuple[Any, ...]:
    # A reference is a bare answer: boxing it makes math-verify read it as one LaTeX expression.
    # Cached: the RL trainer scores every reference once per sample of its group.
    return tuple(_math_verify().parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout_s))


def math_verify_check(response: str, reference: str) -> bool:
    """math-verify's judgement of `response` against the answer `reference`; False on any error.

    Its timeouts use SIGALRM, which only the main thread may set: elsewhere it runs without them.
    """
    mv = _math_verify()
    if mv is None:
        resolve_verifier("math_verify")  # raises naming the package
    from math_verify.errors import TimeoutException  # a BaseException, not an Exception

    timeout_s = _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = _parsed_reference(reference, timeout_s)
        if not gold:
            return False
        predicted = mv.parse(response, parsing_timeout=timeout_s)
        return bool(predicted) and bool(mv.verify(list(gold), predicted, timeout_seconds=timeout_s))
    except (Exception, TimeoutException):  # noqa: BLE001  (a malformed response is a wrong answer, not a crash)
        return False


def check_answer(response: str, reference: str, *, verifier: str = "auto") -> bool:
    """Whether the answer in a full response equals `reference`.

    verifier: "builtin" (`extract_answer` then `answers_match`), "math_verify" (`math_verify_check`)
    or "auto": math-verify when installed, else the built-in checker.
    """
    if resolve_verifier(verifier) == "math_verify":
        return math_verify_check(response, reference)
    return answers_match(extract_answer(response), reference)
