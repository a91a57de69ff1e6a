"""ArithChain: multi-step arithmetic solved one operation at a time, with per-step labels.

A problem `"12+7-30+5="` is solved left to right in steps `"12+7=19;19-30=-11;-11+5=-6;#-6"`:
each step applies the next operator to the running value, `;` ends a step and `#` introduces the
final answer. Only `+` and `-` are used, so left-to-right evaluation is the true value.

The step checker is rule-based with error propagation: step k is correct iff it reads
`v op x = w` where `v` is the true running value after k steps, `op x` is the problem's next
operation and `w` its true result. A step that builds on an earlier wrong value is wrong even if
its own arithmetic is right. These labels are what BCPG-NSA's step judge and a PRM learn from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxrl_llm.envs.task import DrawnTask, Problem

__all__ = ["ArithChainTask", "ChainStep", "chain_steps", "parse_steps", "final_answer", "grammar_prefix_length",
           "STEP_END", "ANSWER_MARK"]

STEP_END, ANSWER_MARK = ";", "#"
_STEP = re.compile(r"^\s*(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*$")
_FINAL = re.compile(r"^\s*(-?\d+)")


class ChainStep(NamedTuple):
    """One parsed step: `text` spans characters `[start, end)` of the response (the `;` included)."""

    start: int
    end: int
    text: str
    ok: bool


def chain_steps(operands: Sequence[int], ops: Sequence[str]) -> list[str]:
    """The correct steps `["12+7=19", "19-30=-11", ...]` of a left-to-right +/- chain."""
    if len(ops) != len(operands) - 1:
        raise ValueError(f"ops must have len(operands) - 1 = {len(operands) - 1} entries; got {len(ops)}")
    value, steps = int(operands[0]), []
    for op, x in zip(ops, operands[1:]):
        if op not in "+-":
            raise ValueError(f"ops entries must be '+' or '-'; got {op!r}")
        new = value + int(x) if op == "+" else value - int(x)
        steps.append(f"{value}{op}{int(x)}={new}")
        value = new
    return steps


def final_answer(response: str) -> int | None:
    """The integer after the last `#`, or None (no `#`, or no integer right after it)."""
    pos = response.rfind(ANSWER_MARK)
    if pos < 0:
        return None
    match = _FINAL.match(response[pos + 1:])
    return int(match.group(1)) if match else None


def parse_steps(operands: Sequence[int], ops: Sequence[str], response: str) -> list[ChainStep]:
    """The response's steps before its `#`, each labelled by the rule-based checker (see module doc).

    A step is the text up to and including each `;`; text after the last `;` and before `#` (an
    unfinished step) is a step too. Steps beyond the problem's operations are wrong.
    """
    body_end = response.find(ANSWER_MARK)
    body = response if body_end < 0 else response[:body_end]
    steps, start, value, k = [], 0, int(operands[0]), 0
    while start < len(body):
        cut = body.find(STEP_END, start)
        end = len(body) if cut < 0 else cut + 1
        text = body[start:end]
        if not text.strip(STEP_END).strip():
            start = end
            continue
        match = _STEP.match(text.rstrip(STEP_END))
        ok = False
        if match and k < len(ops) and value is not None:
            v, op, x, w = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
            true_next = value + int(operands[k + 1]) if ops[k] == "+" else value - int(operands[k + 1])
            ok = v == value and op == ops[k] and x == int(operands[k + 1]) and w == true_next
        if ok:
            value = true_next
        else:
            value = None  # error propagation: nothing after a wrong step is correct
        steps.append(ChainStep(start, end, text, ok))
        start, k = end, k + 1
    return steps


def _integer_end(text: str, i: int, max_digits: int) -> tuple[int, int]:
    """`(end, digits)` of the longest `-?[0-9]{1,max_digits}` prefix of `text[i:]` (digits may be 0)."""
    j = i + 1 if text[i:i + 1] == "-" else i
    start = j
    while j < len(text) and j - start < max_digits and text[j] in "0123456789":
        j += 1
    return j, j - start


def grammar_prefix_length(operands: Sequence[int], ops: Sequence[str], response: str, *, max_digits: int) -> int:
    """Length of the longest prefix of `response` that can still continue to a well-formed chain.

    The well-formed responses of a problem with operands `a_0..a_n` and operators `o_1..o_n` are
    `S_1;S_2;...;S_m;#A` with `0 <= m <= n`, where step `S_k` is `V_k o_k a_k=W_k`: `V_1` is `a_0`,
    `V_k` the result `W_{k-1}` the response itself wrote (a wrong result carried forward is an
    arithmetic error, not a grammar error), and `W_k`, `A` are integers `-?[0-9]{1,max_digits}`.
    Nothing follows `A`. So a character leaves the grammar when it cannot continue the chain
    (`"12+7=19;;"`, `"12+7=19x"`), repeats or skips a step (`"12+7=19;12+7..."` fails at the `2` where
    `19` was due), adds a step beyond the n operations, or follows the answer. Returns
    `len(response)` when the whole response is a prefix of a well-formed one (including an
    unfinished one: stopping early is a wrong answer, not a garbled tail).
    """
    n, i, value = len(response), 0, str(int(operands[0]))
    for k in range(len(ops) + 1):
        if i >= n:
            return n
        if response[i] == ANSWER_MARK:
            end, digits = _integer_end(response, i + 1, max_digits)
            return n if end == n else end  # a missing answer or text after it leaves at `end`
        if k == len(ops):
            return i  # every operation done: only the answer may follow
        head = f"{value}{ops[k]}{int(operands[k + 1])}="
        for c in head:
            if i >= n:
                return n
            if response[i] != c:
                return i
            i += 1
        end, digits = _integer_end(response, i, max_digits)
        if end >= n:
            return n
        if digits == 0 or response[end] != STEP_END:
            return end
        value, i = response[i:end], end + 1
    return i


class ArithChainTask(DrawnTask):
    """Left-to-right +/- chains of `num_operands` operands (an int or an inclusive `(low, high)`
    range) of at most `num_digits` digits.

    `score` is 1.0 iff the integer after the response's last `#` is the true value (the steps are
    not checked: the outcome reward of RL). `worked_solution(problem)` is the SFT target.
    `metadata`: operands, ops, answer, steps (the correct step texts) and `difficulty` (the
    number of operations).
    """

    name = "arith_chain"
    reward_names: tuple[str, ...] = ("correct",)

    def __init__(self, num_operands: int | Sequence[int] = (3, 4), num_digits: int = 2, ops: str = "+-", *,
                 eval_fraction: float = 0.1):
        super().__init__(eval_fraction=eval_fraction)
        low, high = (num_operands, num_operands) if isinstance(num_operands, (int, np.integer)) else tuple(num_operands)
        if not 2 <= int(low) <= int(high):
            raise ValueError(f"num_operands must be >= 2 (or a (low, high) range with 2 <= low <= high); "
                             f"got {num_operands!r}")
        if int(num_digits) < 1:
            raise ValueError(f"num_digits must be >= 1; got {num_digits}")
        if not ops or any(op not in "+-" for op in ops) or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be distinct characters from '+-'; got {ops!r}")
        self.num_operands = (int(low), int(high))
        self.num_digits = int(num_digits)
        self.ops = ops

    def draw(self, rng: np.random.Generator):
        n = int(rng.integers(self.num_operands[0], self.num_operands[1] + 1))
        operands = rng.integers(0, 10**self.num_digits, size=n).tolist()
        ops = [self.ops[i] for i in rng.integers(0, len(self.ops), size=n - 1)]
        steps = chain_steps(operands, ops)
        answer = int(steps[-1].rsplit("=", 1)[1])
        prompt = "".join(f"{x}{op}" for x, op in zip(operands, ops)) + f"{operands[-1]}="
        return prompt, str(answer), {"operands": tuple(operands), "ops": tuple(ops), "answer": answer,
                                     "steps": tuple(steps), "difficulty": n - 1}

    def worked_solution(self, problem: Problem) -> str:
        """`"12+7=19;19-30=-11;#-11"`: every step, then the answer."""
        return STEP_END.join(problem.metadata["steps"]) + STEP_END + ANSWER_MARK + problem.reference

    sft_target = worked_solution

    def privileged_prompt(self, problem: Problem) -> str:
        """The prompt with the first step already written (a worked step as the hint)."""
        return f"{problem.prompt}{problem.metadata['steps'][0]}{STEP_END}"

    def step_labels(self, problem: Problem, response: str) -> list[ChainStep]:
        return parse_steps(problem.metadata["operands"], problem.metadata["ops"], response)

    def error_start(self, problem: Problem, response: str) -> int:
        """Index of the response's first character outside the chain grammar (`grammar_prefix_length`;
        `len(response)` when there is none). Integers may have as many digits as the largest
        possible running value, `num_operands * (10**num_digits - 1)`."""
        operands = problem.metadata["operands"]
        max_digits = len(str(len(operands) * (10**self.num_digits - 1)))
        return grammar_prefix_length(operands, problem.metadata["ops"], response, max_digits=max_digits)

    def score(self, problem: Problem, response: str) -> float:
        value = final_answer(response)
        return 1.0 if value is not None and str(value) == problem.reference else 0.0
