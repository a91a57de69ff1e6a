"""Built-in arithmetic task family with graded difficulty: prompts like `"12+345="`, answer `"357"`.

A problem is `num_operands` non-negative integers of at most `num_digits` digits joined by
operators from `ops` (`+`, `-`, `*`, usual precedence: `*` binds tighter). Answers may be negative.

Splits are disjoint by construction: a prompt belongs to the eval split iff a stable hash of its
text falls below `eval_fraction`, and `sample(..., split=s)` redraws until the prompt is in `s`.
The held-out set therefore never shares a prompt with training, whatever seeds are used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxrl_llm.envs.task import DrawnTask, Problem

__all__ = [
    "ArithmeticLevel",
    "ARITHMETIC_LEVELS",
    "ArithmeticTask",
    "evaluate_expression",
    "parse_leading_int",
]

_OPS = "+-*"


@dataclass(frozen=True)
class ArithmeticLevel:
    """Difficulty knobs: digits per operand, operand count, allowed operators."""

    num_digits: int
    num_operands: int
    ops: str

    def __post_init__(self):
        if self.num_digits < 1:
            raise ValueError(f"num_digits must be >= 1; got {self.num_digits}")
        if self.num_operands < 2:
            raise ValueError(f"num_operands must be >= 2; got {self.num_operands}")
        valid = all(op in _OPS for op in self.ops) and len(set(self.ops)) == len(self.ops)
        if not self.ops or not valid:
            raise ValueError(f"ops must be distinct characters from {_OPS!r}; got {self.ops!r}")


# Graded: each level is at least as hard as the previous in every knob and harder in one.
ARITHMETIC_LEVELS: tuple[ArithmeticLevel, ...] = (
    ArithmeticLevel(num_digits=1, num_operands=2, ops="+"),
    ArithmeticLevel(num_digits=2, num_operands=2, ops="+"),
    ArithmeticLevel(num_digits=2, num_operands=2, ops="+-"),
    ArithmeticLevel(num_digits=3, num_operands=2, ops="+-"),
    ArithmeticLevel(num_digits=3, num_operands=2, ops="+-*"),
    ArithmeticLevel(num_digits=3, num_operands=3, ops="+-*"),
    ArithmeticLevel(num_digits=4, num_operands=3, ops="+-*"),
    ArithmeticLevel(num_digits=5, num_operands=4, ops="+-*"),
)


def evaluate_expression(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Exact integer value of `operands[0] ops[0] operands[1] ...` with `*` before `+`/`-`."""
    if len(ops) != len(operands) - 1:
        raise ValueError(
            f"ops must have len(operands) - 1 = {len(operands) - 1} entries; got {len(ops)}"
        )
    # Sum of signed products: each +/- starts a new term, * extends the current one.
    terms, signs = [int(operands[0])], [1]
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= int(x)
        elif op in "+-":
            terms.append(int(x))
            signs.append(1 if op == "+" else -1)
        else:
            raise ValueError(f"ops entries must be one of {_OPS!r}; got {op!r}")
    return sum(s * t for s, t in zip(signs, terms))


_LEADING_INT = re.compile(r"\s*(-?\d+)(?!\d)")


def parse_leading_int(response: str) -> int | None:
    """The integer a response starts with (after whitespace), or None: `" -12 and"` -> -12."""
    match = _LEADING_INT.match(response)
    return int(match.group(1)) if match else None


class ArithmeticTask(DrawnTask):
    """Verifiable arithmetic at one difficulty level (splits and sampling from `DrawnTask`).

    Args:
      level: an index into `ARITHMETIC_LEVELS` or an `ArithmeticLevel`.
      eval_fraction: share of the prompt space held out for the eval split, in (0, 1).

    `score` is 1.0 iff the response starts with the exact answer (`"357"`, `" 357\\n..."`), else
    0.0: the prompt ends at `=`, so the answer must come first.
    """

    name = "arithmetic"
    reward_names: tuple[str, ...] = ("correct",)
    split_salt = "arith-split"

    def __init__(self, level: int | ArithmeticLevel = 0, *, eval_fraction: float = 0.1):
        if isinstance(level, ArithmeticLevel):
            self.level = level
            self.level_index = None
        else:
            if not 0 <= level < len(ARITHMETIC_LEVELS):
                raise ValueError(
                    f"level must be in [0, {len(ARITHMETIC_LEVELS)}) or an ArithmeticLevel; "
                    f"got {level}"
                )
            self.level = ARITHMETIC_LEVELS[level]
            self.level_index = int(level)
        super().__init__(eval_fraction=eval_fraction)

    def draw(self, rng: np.random.Generator) -> tuple[str, str, dict]:
        lv = self.level
        operands = rng.integers(0, 10**lv.num_digits, size=lv.num_operands).tolist()
        ops = [lv.ops[i] for i in rng.integers(0, len(lv.ops), size=lv.num_operands - 1)]
        prompt = "".join(f"{x}{op}" for x, op in zip(operands, ops)) + f"{operands[-1]}="
        answer = evaluate_expression(operands, ops)
        metadata = {"level": self.level_index, "operands": tuple(operands), "ops": tuple(ops), "answer": answer}
        return prompt, str(answer), metadata

    def privileged_prompt(self, problem: Problem) -> str:
        """The prompt with a worked copy of the same problem in front (`"12+34=46;12+34="`): the
        privileged context of a self-teacher (SDAR) or a hinted rollout (condition flag 1)."""
        return f"{problem.prompt}{problem.reference};{problem.prompt}"

    def score(self, problem: Problem, response: str) -> float:
        value = parse_leading_int(response)
        return 1.0 if value is not None and str(value) == problem.reference else 0.0

    def extract_answer(self, response: str) -> str | None:
        """The integer the response starts with, as text (`" 0357 ="` -> `"357"`), or None: what `score`
        compares, so equal answers always score alike (maj@k votes over these)."""
        value = parse_leading_int(response)
        return None if value is None else str(value)
