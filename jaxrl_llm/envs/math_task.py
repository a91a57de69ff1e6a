"""A verifiable task over a list of (question, answer) pairs, checked by `math_answer`.

For math datasets the user already holds in memory (GSM8K-style or MATH-style records). The split
of a question is a stable hash of its text, as for the arithmetic task, so train and eval never
share a question even when the list is reshuffled or extended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrl_llm.envs.math_answer import check_answer
from jaxrl_llm.envs.task import Problem, check_split, make_rng, stable_hash

__all__ = ["MathAnswerTask", "DEFAULT_MATH_TEMPLATE"]

DEFAULT_MATH_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n"
)

_HASH_SALT = "math-split"
_HASH_BUCKETS = 1_000_000


class MathAnswerTask:
    """Samples questions from `records` and scores responses with `check_answer`.

    Args:
      records: `(question, answer)` pairs; answers are compared after normalisation.
      eval_fraction: share of questions (by stable hash) held out for the eval split.
      template: prompt format with a `{question}` field.
    """

    name = "math_answer"
    reward_names: tuple[str, ...] = ("correct",)

    def __init__(
        self,
        records: Sequence[tuple[str, str]],
        *,
        eval_fraction: float = 0.1,
        template: str = DEFAULT_MATH_TEMPLATE,
    ):
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1); got {eval_fraction}")
        if "{question}" not in template:
            raise ValueError("template must contain a {question} field")
        self.template = template
        self.eval_fraction = float(eval_fraction)
        self._by_split: dict[str, list[tuple[str, str]]] = {"train": [], "eval": []}
        for i, record in enumerate(records):
            if len(record) != 2:
                raise ValueError(f"records[{i}] must be a (question, answer) pair; got {record!r}")
            question, answer = str(record[0]), str(record[1])
            self._by_split[self.split_of(question)].append((question, answer))

    def split_of(self, question: str) -> str:
        bucket = stable_hash(question, _HASH_SALT) % _HASH_BUCKETS
        return "eval" if bucket < self.eval_fraction * _HASH_BUCKETS else "train"

    def num_problems(self, split: str = "train") -> int:
        check_split(split)
        return len(self._by_split[split])

    def problem(self, index: int, split: str = "train") -> Problem:
        """The `index`-th problem of `split` (records order), e.g. to walk a whole eval split."""
        check_split(split)
        question, answer = self._by_split[split][index]
        return Problem(
            prompt=self.template.format(question=question),
            reference=answer,
            metadata={"split": split, "index": index, "uid": stable_hash(question)},
        )

    def sample(self, seed: int | np.random.Generator, split: str = "train") -> Problem:
        pool_size = self.num_problems(split)
        if pool_size == 0:
            raise ValueError(f"split {split!r} holds no records; adjust eval_fraction or records")
        rng = make_rng(seed, check_split(split))
        return self.problem(int(rng.integers(pool_size)), split)

    def score(self, problem: Problem, response: str) -> float:
        return 1.0 if check_answer(response, problem.reference) else 0.0
