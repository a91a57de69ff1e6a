"""AutoThinkMix: easy and hard +/- chains behind AutoThink's ellipsis prompt (arXiv 2505.10832).

Every prompt is an ArithChain problem followed by `<think>\\n...\\n`, so thinking is optional:

    prompt   "3+5=<think>\\n...\\n"                       (easy: 2 one-digit operands)
    think    "3+5=8\\n</think>\\n\\n8"                     the chain steps, then the answer
    no-think "</think>\\n\\n8"                             the answer directly

`score` is 1.0 iff the text after the last `</think>` is exactly the answer (an integer, spaces
allowed). A response without `</think>`, or with nothing after it, is a format error. `metadata["difficulty"]` is "easy" or "hard"; the SFT warm-up
(`sft_target`) writes either mode, chosen at random per drawn problem, so that both modes exist
before RL decides when to think.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxrl_llm.envs.arith_chain import STEP_END, ArithChainTask
from jaxrl_llm.envs.task import DrawnTask, Problem
from jaxrl_llm.envs.thinking import THINK_CLOSE, is_no_think, split_think

__all__ = [
    "ELLIPSIS_PROMPT",
    "AutoThinkMixTask",
    "ThinkFacts",
    "no_think_response",
    "think_facts",
    "think_response",
]

ELLIPSIS_PROMPT = "<think>\n...\n"
_CLOSE = THINK_CLOSE + "\n\n"
_INTEGER = re.compile(r"^\s*(-?\d+)\s*$")


class ThinkFacts(NamedTuple):
    """What AutoThink's reward reads from one response."""

    correct: bool  # the answer after `</think>` is the reference
    no_think: bool  # AutoThink's no-think mode (`thinking.is_no_think`)
    format_ok: bool  # `</think>` present and an answer (non-blank text) after it


def think_response(problem: Problem) -> str:
    """Think mode: `"12+7=19;19-30=-11\\n</think>\\n\\n-11"` (steps, close, answer)."""
    return STEP_END.join(problem.metadata["steps"]) + "\n" + _CLOSE + problem.reference


def no_think_response(problem: Problem) -> str:
    """No-think mode: `"</think>\\n\\n-11"` (the thinking closed at once, then the answer)."""
    return _CLOSE + problem.reference


def think_facts(problem: Problem, response: str) -> ThinkFacts:
    """Correctness, mode and format of `response` (the text after the prompt)."""
    answer = split_think(response).answer
    match = None if answer is None else _INTEGER.match(answer)
    correct = match is not None and match.group(1) == problem.reference
    # Any text after `</think>` is an answer: a wrong no-think answer is -1, never the format error's 0.
    return ThinkFacts(correct, is_no_think(problem.prompt + response, response), bool(answer and answer.strip()))


class AutoThinkMixTask(DrawnTask):
    """Easy (`easy_operands` operands of `easy_digits` digits) and hard (`hard_operands`, an int or
    an inclusive `(low, high)` range, of `hard_digits` digits) chains; a problem is easy with
    probability `easy_fraction`. `sft_no_think_fraction`: share of warm-up targets in no-think mode.
    """

    name = "autothink_mix"
    reward_names: tuple[str, ...] = ("correct",)

    def __init__(self, easy_operands: int | Sequence[int] = 2, easy_digits: int = 1,
                 hard_operands: int | Sequence[int] = (4, 5), hard_digits: int = 2, easy_fraction: float = 0.5,
                 sft_no_think_fraction: float = 0.5, ops: str = "+-", *, eval_fraction: float = 0.1):
        super().__init__(eval_fraction=eval_fraction)
        for field, value in (("easy_fraction", easy_fraction), ("sft_no_think_fraction", sft_no_think_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1]; got {value}")
        self.levels = {"easy": ArithChainTask(easy_operands, easy_digits, ops),
                       "hard": ArithChainTask(hard_operands, hard_digits, ops)}
        self.easy_fraction = float(easy_fraction)
        self.sft_no_think_fraction = float(sft_no_think_fraction)

    def draw(self, rng: np.random.Generator):
        difficulty = "easy" if rng.random() < self.easy_fraction else "hard"
        prompt, reference, meta = self.levels[difficulty].draw(rng)
        meta = {**meta, "num_ops": meta["difficulty"], "difficulty": difficulty,
                "sft_no_think": bool(rng.random() < self.sft_no_think_fraction)}
        return prompt + ELLIPSIS_PROMPT, reference, meta

    def sft_target(self, problem: Problem) -> str:
        """The warm-up completion in the mode drawn with the problem (`metadata["sft_no_think"]`)."""
        return no_think_response(problem) if problem.metadata["sft_no_think"] else think_response(problem)

    think_facts = staticmethod(think_facts)  # what the `autothink` scorer reads (envs/autothink_reward.py)

    def score(self, problem: Problem, response: str) -> float:
        return 1.0 if think_facts(problem, response).correct else 0.0
