"""The verifiable-task interface: a task samples a `Problem` and scores a text response.

A task is plain Python (no JAX): it runs on the host between rollout and advantage. Scores are a
float per response, or a reward vector `[R]` whose dimensions are named by `reward_names` (for
multi-dimensional advantages such as RDPO).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Problem", "VerifiableTask", "SPLITS", "check_split", "make_rng", "stable_hash"]

SPLITS: tuple[str, ...] = ("train", "eval")


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
