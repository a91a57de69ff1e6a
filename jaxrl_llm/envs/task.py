"""The verifiable-task interface: a task samples a `Problem` and scores a text response.

A task is plain Python (no JAX): it runs on the host between rollout and advantage. Scores are a
float per response, or a reward vector `[R]` whose dimensions are named by `reward_names` (for
multi-dimensional advantages such as RDPO).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Problem", "VerifiableTask", "TrainerTask", "DrawnTask", "SPLITS", "check_split", "make_rng",
           "stable_hash"]

SPLITS: tuple[str, ...] = ("train", "eval")
_HASH_BUCKETS = 1_000_000
_MAX_DRAWS = 10_000


@dataclass(frozen=True)
class Problem:
    """One task instance.

    prompt: the text the policy continues (e.g. `"12+345="`).
    reference: the verified answer as text (e.g. `"357"`).
    metadata: task-specific facts (split, difficulty, a stable `uid`, ...).
    """

    prompt: str
    reference: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class VerifiableTask(Protocol):
    """A family of problems with a programmatic checker.

    `reward_names` names the entries of `score`'s output: one name means a float score, more
    names mean a `[R]` float32 vector in that order.
    """

    name: str
    reward_names: tuple[str, ...]

    def sample(self, seed: int | np.random.Generator, split: str = "train") -> Problem: ...

    def score(self, problem: Problem, response: str) -> float | np.ndarray: ...


def stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that, unlike `hash()`, is the same in every process and Python version."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "little")


def make_rng(seed: int | np.random.Generator, *salt: int) -> np.random.Generator:
    """A generator from an int seed (mixed with `salt`), or the given generator unchanged."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy Generator; got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    return np.random.default_rng([int(seed), *salt])


def check_split(split: str) -> int:
    """Index of `split` in `SPLITS`; raises naming the allowed values."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return SPLITS.index(split)


@runtime_checkable
class TrainerTask(VerifiableTask, Protocol):
    """Every method the trainers (`sft`, `rl`, `dpo`, `dpo_vp`) call on a task.

    `sample_batch` feeds RL steps and SFT warm-up records, `eval_set` the held-out evaluation.
    Optional: `sft_target(problem) -> str` (the warm-up record's completion; default the
    reference), `privileged_prompt(problem) -> str` (a hinted prompt: SDAR's self-teacher, SkillC's
    hinted stream, `data.privileged_fraction` warm-up records), `reward_spec` (RDPO's ranges).
    """

    def sample_batch(self, n: int, seed: int, split: str = "train") -> list[Problem]: ...

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]: ...


class DrawnTask(abc.ABC):
    """A verifiable task from two methods: `draw(rng)` and `score(problem, response)`.

    Subclasses set `name` and implement `draw(rng) -> (prompt, reference)` or `(prompt, reference,
    metadata)`; this base derives `sample`, `sample_batch`, `eval_set` and disjoint splits. A
    prompt belongs to the eval split iff a stable hash of its text (salted with `split_salt`,
    default the task's name) falls below `eval_fraction`; `sample(seed, split)` redraws until the
    prompt lies in `split`, so train and eval never share a prompt whatever seeds are used.

    Example (a complete task; `register_task("parity", ParityTask)` makes `data.task="parity"` work)::

        class ParityTask(DrawnTask):
            name = "parity"

            def draw(self, rng):
                bits = "".join(rng.choice(list("01"), size=6))
                return f"parity {bits}=", str(bits.count("1") % 2)

            def score(self, problem, response):
                return float(response.strip()[:1] == problem.reference)
    """

    name: str = "drawn"
    reward_names: tuple[str, ...] = ("correct",)
    split_salt: str | None = None

    def __init__(self, *, eval_fraction: float = 0.1):
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1); got {eval_fraction}")
        self.eval_fraction = float(eval_fraction)

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator) -> tuple[str, str] | tuple[str, str, Mapping[str, Any]]:
        """One problem from `rng`: `(prompt, reference)` or `(prompt, reference, metadata)`."""

    @abc.abstractmethod
    def score(self, problem: Problem, response: str) -> float | np.ndarray:
        """The response's reward (a float, or `[R]` for `len(reward_names) == R`)."""

    def sft_target(self, problem: Problem) -> str:
        """The completion an SFT warm-up record teaches for `problem` (default: the reference)."""
        return problem.reference

    def split_of(self, prompt: str) -> str:
        """The split a prompt belongs to (a pure function of its text)."""
        salt = self.split_salt if self.split_salt is not None else self.name
        bucket = stable_hash(prompt, salt) % _HASH_BUCKETS
        return "eval" if bucket < self.eval_fraction * _HASH_BUCKETS else "train"

    def sample(self, seed: int | np.random.Generator, split: str = "train") -> Problem:
        """A problem of `split`; the same int seed and split always give the same problem."""
        rng = make_rng(seed, check_split(split))
        for _ in range(_MAX_DRAWS):
            drawn = self.draw(rng)
            if len(drawn) not in (2, 3):
                raise ValueError(f"{type(self).__name__}.draw must return (prompt, reference[, metadata]); "
                                 f"got {len(drawn)} items")
            prompt, reference = str(drawn[0]), str(drawn[1])
            if self.split_of(prompt) == split:
                extra = dict(drawn[2]) if len(drawn) == 3 else {}
                metadata = {"split": split, **extra, "uid": stable_hash(prompt)}
                return Problem(prompt=prompt, reference=reference, metadata=metadata)
        raise RuntimeError(
            f"{self.name}: no {split!r} problem found in {_MAX_DRAWS} draws; the prompt space is too "
            f"small for eval_fraction={self.eval_fraction}"
        )

    def sample_batch(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """`n` problems drawn from one generator seeded by `seed` (repeats are possible)."""
        rng = make_rng(seed, check_split(split))
        return [self.sample(rng, split) for _ in range(n)]

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct held-out problems (deterministic in `seed`)."""
        rng = make_rng(seed, check_split("eval"))
        seen: dict[str, Problem] = {}
        for _ in range(_MAX_DRAWS):
            if len(seen) == n:
                break
            problem = self.sample(rng, "eval")
            seen.setdefault(problem.prompt, problem)
        if len(seen) < n:
            raise ValueError(
                f"{self.name}: n={n} distinct eval problems requested but only {len(seen)} were found; "
                "use a harder level or a larger eval_fraction"
            )
        return list(seen.values())
