"""Error tokens: the response tokens after a response leaves its task's grammar.

Quantized rollouts fail in a specific way on long answers: the sampler drifts into garbled or
repetitive text that the full-precision learner finds very unlikely (QaRL, arXiv 2604.07853).
This module counts that text so that the failure can be measured.

Definition. A task that has a grammar provides `error_start(problem, response) -> int`: the index of
the first character of `response` that no well-formed response of `problem` can have at that place
(`len(response)` when there is none; ArithChain's is `envs/arith_chain.py: grammar_prefix_length`).
A response token is an *error token* iff its text ends after that index, i.e. it holds at least
one character at or past it (so a multi-character token straddling the boundary counts), or it
lies wholly past it. The eos token is never an error token. The error-token rate of a batch is
`sum(error tokens) / sum(response tokens)`, eos included in the denominator (the same count as
`response_length`).

Free-text tasks without a grammar can use `degenerate_error_start`, the objective library's
degenerate-repetition check (`objectives/autothink.py`): a degenerate response is all error,
anything else none (the check does not locate where the repetition starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrl_llm.objectives.autothink import has_degenerate_repetition

__all__ = ["has_error_definition", "degenerate_error_start", "error_token_counts", "error_token_metrics"]


def has_error_definition(task: Any) -> bool:
    """True when `task` defines `error_start(problem, response)` (the metrics are then logged)."""
    return callable(getattr(task, "error_start", None))


def degenerate_error_start(problem: Any, response: str) -> int:
    """`error_start` for free text: 0 if `response` degenerates into repetition, else `len(response)`."""
    return 0 if has_degenerate_repetition(response) else len(response)


def error_token_counts(task: Any, problems: Sequence[Any], pieces: Sequence[Sequence[str]]) -> np.ndarray:
    """`[B]` int64: error tokens of each response (see the module doc).

    problems: the problem of each row; pieces: per row, the decoded text of each response token,
    eos excluded (`train/rl_rollout.py: response_pieces`).
    """
    if len(problems) != len(pieces):
        raise ValueError(f"pieces must have one entry per problem ({len(problems)}); got {len(pieces)}")
    counts = np.zeros(len(pieces), np.int64)
    for b, (problem, row) in enumerate(zip(problems, pieces)):
        text = "".join(row)
        start = int(task.error_start(problem, text))
        if start >= len(text):
            continue
        ends = np.cumsum([len(p) for p in row])
        begins = ends - np.asarray([len(p) for p in row], np.int64)
        counts[b] = int(np.sum((ends > start) | (begins >= start)))
    return counts


def error_token_metrics(task: Any, problems: Sequence[Any], pieces: Sequence[Sequence[str]],
                        lengths: np.ndarray, *, prefix: str) -> dict[str, float]:
    """`{prefix}/error_token_rate` (error tokens / response tokens, eos included) and
    `{prefix}/garbled_frac` (share of responses with at least one error token).

    lengths: `[B]` response lengths in tokens (eos included), the rate's denominator.
    """
    counts = error_token_counts(task, problems, pieces)
    lengths = np.asarray(lengths)
    if lengths.shape != counts.shape:
        raise ValueError(f"lengths must be [B] = [{len(counts)}]; got {lengths.shape}")
    return {f"{prefix}/error_token_rate": float(counts.sum() / max(int(lengths.sum()), 1)),
            f"{prefix}/garbled_frac": float(np.mean(counts > 0)) if len(counts) else 0.0}
