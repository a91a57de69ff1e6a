"""Text facts that think-mode reward shaping needs: the `</think>` split, no-think mode detection,
degenerate repetition, and the AutoThink base reward.

The batch-level shaping that follows (AutoThink stage-1 balance, stage-3 length terms) works on
arrays and lives with the objectives; this module only reads text.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ThinkSplit",
    "split_think",
    "is_no_think",
    "has_degenerate_repetition",
    "autothink_base_reward",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# The ellipsis prompt closes thinking right away; a response may also start by closing it.
_NO_THINK_MARK = "<think>\n...\n</think>\n\n"
_NO_THINK_START = "</think>\n\n"


class ThinkSplit(NamedTuple):
    """thinking: text before the last `</think>`; answer: text after it (None if never closed)."""

    thinking: str
    answer: str | None


def split_think(response: str) -> ThinkSplit:
    """Splits a response at its last `</think>`; `answer` is None when thinking is not closed."""
    pos = response.rfind(THINK_CLOSE)
    if pos < 0:
        return ThinkSplit(response, None)
    return ThinkSplit(response[:pos], response[pos + len(THINK_CLOSE) :])


def is_no_think(prompt_and_response: str, response: str | None = None) -> bool:
    """AutoThink mode: no-think iff the text holds `<think>\\n...\\n</think>\\n\\n` or the response
    starts with `</think>\\n\\n`."""
    if _NO_THINK_MARK in prompt_and_response:
        return True
    return response is not None and response.startswith(_NO_THINK_START)


def has_degenerate_repetition(
    text: str, *, min_repeats: int = 10, max_ngram: int = 30, max_word_chars: int = 120
) -> bool:
    """True if some n-gram (n <= max_ngram) repeats >= min_repeats times in a row, or a
    whitespace-free word has >= max_word_chars characters.

    Words are cut into fixed, non-overlapping n-word chunks starting at the first word, and runs
    of identical consecutive chunks are counted (the chunking AutoThink's checker uses).
    """
    words = text.split()
    if any(len(w) >= max_word_chars for w in words):
        return True
    for n in range(1, max_ngram + 1):
        if len(words) < n * min_repeats:
            break
        chunks = [tuple(words[i : i + n]) for i in range(0, len(words) - n + 1, n)]
        run = 1
        for prev, cur in zip(chunks, chunks[1:]):
            run = run + 1 if cur == prev else 1
            if run >= min_repeats:
                return True
    return False


def autothink_base_reward(
    correct: bool, no_think: bool, format_ok: bool, response: str = ""
) -> float:
    """AutoThink per-sample reward before batch shaping.

    think: +1 correct, 0 wrong; no-think: +2 correct, -1 wrong; format error 0. A negative reward
    whose text degenerates (`has_degenerate_repetition`) becomes -2.
    """
    if not format_ok:
        return 0.0
    if no_think:
        reward = 2.0 if correct else -1.0
    else:
        reward = 1.0 if correct else 0.0
    if reward < 0 and has_degenerate_repetition(response):
        return -2.0
    return reward
