"""A verifiable task over a list of (question, answer) pairs, checked by `math_answer`.

For math datasets the user already holds in memory (GSM8K-style or MATH-style records). The split
of a question is a stable hash of its text, as for the arithmetic task, so train and eval never
share a question even when the list is reshuffled or extended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrl_llm.envs.math_answer import check_answer, extract_answer, normalize_answer, resolve_verifier
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
      records: `(question, answer)` pairs, or `(question, answer, solution)` triples whose worked
        solution is the SFT target (`sft_target`); answers are compared by the verifier.
      eval_fraction: share of questions (by stable hash) held out for the eval split.
      template: prompt format with a `{question}` field.
      eval_records: a separate held-out set (same form); then every one of `records` is for
        training and `eval_fraction` is not used.
      verifier: `math_answer.VERIFIERS`: "auto" (math-verify when installed), "math_verify", "builtin".
    """

    name = "math_answer"
    reward_names: tuple[str, ...] = ("correct",)

    def __init__(
        self,
        records: Sequence[tuple[str, str]],
        *,
        eval_fraction: float = 0.1,
        template: str = DEFAULT_MATH_TEMPLATE,
        eval_records: Sequence[tuple[str, ...]] | None = None,
        verifier: str = "auto",
    ):
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1); got {eval_fraction}")
        if "{question}" not in template:
            raise ValueError("template must contain a {question} field")
        resolve_verifier(verifier)  # an unknown name, or math_verify without the package, fails here
        self.template = template
        self.eval_fraction = float(eval_fraction)
        self.verifier = verifier
        self._by_split: dict[str, list[tuple[str, str, str | None]]] = {"train": [], "eval": []}
        for i, record in enumerate(records):
            entry = self._entry(record, f"records[{i}]")
            split = self.split_of(entry[0]) if eval_records is None else "train"
            self._by_split[split].append(entry)
        for i, record in enumerate(eval_records or ()):
            self._by_split["eval"].append(self._entry(record, f"eval_records[{i}]"))

    @staticmethod
    def _entry(record: Sequence[str], where: str) -> tuple[str, str, str | None]:
        if len(record) not in (2, 3):
            raise ValueError(f"{where} must be a (question, answer) pair or a (question, answer, solution) "
                             f"triple; got {record!r}")
        solution = str(record[2]) if len(record) == 3 and record[2] is not None else None
        return str(record[0]), str(record[1]), solution

    def split_of(self, question: str) -> str:
        bucket = stable_hash(question, _HASH_SALT) % _HASH_BUCKETS
        return "eval" if bucket < self.eval_fraction * _HASH_BUCKETS else "train"

    def num_problems(self, split: str = "train") -> int:
        check_split(split)
        return len(self._by_split[split])

    def problem(self, index: int, split: str = "train") -> Problem:
        """The `index`-th problem of `split` (records order), e.g. to walk a whole eval split."""
        check_split(split)
        question, answer, solution = self._by_split[split][index]
        metadata = {"split": split, "index": index, "uid": stable_hash(question)}
        if solution is not None:
            metadata["solution"] = solution
        return Problem(prompt=self.template.format(question=question), reference=answer, metadata=metadata)

    def sample(self, seed: int | np.random.Generator, split: str = "train") -> Problem:
        pool_size = self.num_problems(split)
        if pool_size == 0:
            raise ValueError(f"split {split!r} holds no records; adjust eval_fraction or records")
        rng = make_rng(seed, check_split(split))
        return self.problem(int(rng.integers(pool_size)), split)

    def score(self, problem: Problem, response: str) -> float:
        return 1.0 if check_answer(response, problem.reference, verifier=self.verifier) else 0.0

    def sft_target(self, problem: Problem) -> str:
        """The record's worked solution when it has one, else the reference answer."""
        return problem.metadata.get("solution") or problem.reference

    def extract_answer(self, response: str) -> str | None:
        """The response's final answer (`math_answer.extract_answer`) in canonical form (`"0.5"` and
        `"\\frac{1}{2}"` are both `"1/2"`), or None: equal answers score alike (maj@k votes over these)."""
        answer = extract_answer(response)
        return None if answer is None else normalize_answer(answer)
