"""Text facts that think-mode reward shaping needs: the `</think>` split, no-think mode detection,
degenerate repetition, and the AutoThink base reward.

The batch-level shaping that follows (AutoThink stage-1 balance, stage-3 length terms) works on
arrays and lives with the objectives; this module only reads text.
"""

from __future__ import annotations

from typing import NamedTuple

# One definition of "degenerate" for reward shaping and the objectives that penalise it.
from jaxrl_llm.objectives.autothink import has_degenerate_repetition

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
