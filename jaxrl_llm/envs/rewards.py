"""Reward functions over a batch of responses: correctness, format, length, and reward vectors.

All functions are host-side numpy and return float32 arrays: `[B]` per-response rewards or
`[B, R]` reward vectors whose columns are named by a `RewardSpec` (RDPO reads the nominal
`[low, high]` range of each dimension to size its magnitude factor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxrl_llm.envs.math_answer import extract_boxed
from jaxrl_llm.envs.task import Problem, VerifiableTask
from jaxrl_llm.envs.thinking import split_think

__all__ = [
    "RewardSpec",
    "DEFAULT_REWARD_SPEC",
    "overlong_penalty",
    "correctness_rewards",
    "format_rewards",
    "score_batch",
    "reward_vectors",
    "combine_rewards",
    "conjunctive_reward",
    "SCORERS",
    "SCORER_CHECKS",
    "register_scorer",
    "get_scorer",
    "prefix_step_labels",
    "partial_credit",
]


@dataclass(frozen=True)
class RewardSpec:
    """Names and nominal ranges `[low, high]` of the columns of a `[B, R]` reward array."""

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self):
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise ValueError("names, low and high must have the same length")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"every low must be < high; got low={self.low}, high={self.high}")

    @property
    def ranges(self) -> np.ndarray:
        """`[R, 2]` float32 rows `(low, high)`."""
        return np.stack([self.low, self.high], axis=1).astype(np.float32)


# correctness in {0, 1}; format in {0, 1}; length is the DAPO overlong penalty in [-1, 0].
DEFAULT_REWARD_SPEC = RewardSpec(
    names=("correctness", "format", "length"), low=(0.0, 0.0, -1.0), high=(1.0, 1.0, 0.0)
)


def _check_batch(name: str, x: np.ndarray, batch: int) -> np.ndarray:
    if x.shape != (batch,):
        raise ValueError(f"{name} must be [B] = [{batch}]; got {x.shape}")
    return x


def overlong_penalty(lengths, *, max_length: int, cache_length: int) -> np.ndarray:
    """DAPO soft overlong penalty per response.

    `lengths: [B]` response lengths in tokens. Returns `[B]` float32:
    0 if L <= max_length - cache_length; ((max_length - cache_length) - L) / cache_length up to
    max_length (a linear ramp from 0 to -1); -1 beyond max_length.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"cache_length must be in (0, max_length={max_length}]; got {cache_length}"
        )
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be [B]; got {lengths.shape}")
    soft_start = max_length - cache_length
    ramp = (soft_start - lengths) / cache_length
    penalty = np.where(lengths <= soft_start, 0.0, np.where(lengths <= max_length, ramp, -1.0))
    return penalty.astype(np.float32)


def _check_pairs(problems: Sequence[Problem], responses: Sequence[str]) -> int:
    if len(problems) != len(responses):
        raise ValueError(
            f"responses must have one entry per problem ({len(problems)}); got {len(responses)}"
        )
    return len(problems)


def score_batch(
    task: VerifiableTask, problems: Sequence[Problem], responses: Sequence[str]
) -> np.ndarray:
    """`task.score` over a batch: `[B]` float32 for scalar tasks, `[B, R]` for vector tasks
    (`R = len(task.reward_names)`)."""
    batch = _check_pairs(problems, responses)
    scores = [np.asarray(task.score(p, r), dtype=np.float32) for p, r in zip(problems, responses)]
    num_rewards = len(task.reward_names)
    expected = () if num_rewards == 1 else (num_rewards,)
    for i, s in enumerate(scores):
        if s.shape != expected:
            raise ValueError(
                f"{task.name}.score must return shape {expected} (reward_names="
                f"{task.reward_names}); got {s.shape} for item {i}"
            )
    if batch == 0:
        return np.zeros((0, *expected), np.float32)
    return np.stack(scores).astype(np.float32)


def correctness_rewards(
    task: VerifiableTask, problems: Sequence[Problem], responses: Sequence[str]
) -> np.ndarray:
    """`[B]` float32 correctness from a scalar task's `score`."""
    if len(task.reward_names) != 1:
        raise ValueError(
            f"correctness_rewards needs a scalar task; {task.name} has rewards {task.reward_names}"
        )
    return score_batch(task, problems, responses)


def format_rewards(
    responses: Sequence[str],
    finished,
    *,
    require_boxed: bool = False,
    require_think_close: bool = False,
) -> np.ndarray:
    """`[B]` float32 in {0, 1}: 1 iff the response ended with EOS (`finished: [B] bool`, not cut
    at the length limit) and, when asked, holds a `\\boxed{}` answer and/or closed `</think>`
    (the boxed answer must then come after `</think>`)."""
    finished = _check_batch("finished", np.asarray(finished, dtype=bool), len(responses))
    ok = finished.copy()
    for i, text in enumerate(responses):
        if require_think_close:
            answer = split_think(text).answer
            if answer is None:
                ok[i] = False
                continue
            text = answer
        if require_boxed and extract_boxed(text) is None:
            ok[i] = False
    return ok.astype(np.float32)


def reward_vectors(
    task: VerifiableTask,
    problems: Sequence[Problem],
    responses: Sequence[str],
    *,
    lengths,
    finished,
    max_length: int,
    cache_length: int,
    require_boxed: bool = False,
    require_think_close: bool = False,
) -> np.ndarray:
    """`[B, 3]` float32 columns `DEFAULT_REWARD_SPEC.names` = (correctness, format, length).

    lengths: `[B]` response lengths in tokens; finished: `[B]` bool, True if EOS was sampled.
    """
    batch = _check_pairs(problems, responses)
    lengths = _check_batch("lengths", np.asarray(lengths), batch)
    correct = correctness_rewards(task, problems, responses)
    fmt = format_rewards(
        responses, finished, require_boxed=require_boxed, require_think_close=require_think_close
    )
    length = overlong_penalty(lengths, max_length=max_length, cache_length=cache_length)
    return np.stack([correct, fmt, length], axis=1).astype(np.float32)


def combine_rewards(vectors, weights) -> np.ndarray:
    """`[B]` float32 weighted sum `vectors @ weights` of `[B, R]` reward vectors."""
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if vectors.ndim != 2 or weights.shape != (vectors.shape[-1],):
        raise ValueError(
            f"vectors must be [B, R] and weights [R]; got {vectors.shape} and {weights.shape}"
        )
    return vectors @ weights


def conjunctive_reward(*components) -> np.ndarray:
    """`[B]` float32 product of `[B]` reward components in {0, 1} (e.g. LANG's
    R_lc * R_format * R_acc): 1 only when every component holds."""
    if not components:
        raise ValueError("conjunctive_reward needs at least one component")
    arrays = [np.asarray(c, dtype=np.float32) for c in components]
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape or a.ndim != 1:
            raise ValueError(
                f"components[{i}] must be [B] = {arrays[0].shape}; got {a.shape}"
            )
    return np.prod(np.stack(arrays), axis=0).astype(np.float32)


# A scorer maps a batch of responses to `[B]` rewards:
# `fn(task, problems, responses, *, lengths [B], finished [B] bool, max_length) -> [B] float32`.
# Batch-level shaping may also declare `group_ids` ([B] prompt index), `step` (the RL step) and
# `options` (the config section `rl.<name>`, a dict) and return `(rewards [B], {metric: float})`.
SCORERS: dict = {}
# name -> check(options): raises ValueError naming the bad `rl.<name>` field (run by the RL config check).
SCORER_CHECKS: dict = {}


def register_scorer(name: str, *, overwrite: bool = False, check=None):
    """Decorator registering a scorer under `name` (the RL config lists scorers in `rl.scorers`);
    `check(options)` validates its `rl.<name>` section before anything compiles."""
    def decorator(fn):
        if name in SCORERS and not overwrite:
            raise ValueError(f"scorer {name!r} is already registered (pass overwrite=True to replace it)")
        SCORERS[name] = fn
        if check is not None:
            SCORER_CHECKS[name] = check
        return fn

    return decorator


def get_scorer(name: str):
    if name not in SCORERS:
        raise KeyError(f"unknown scorer {name!r}; registered: {sorted(SCORERS)}")
    return SCORERS[name]


@register_scorer("task")
def _task_scorer(task, problems, responses, *, lengths, finished, max_length):
    """The task's own verifier (`correctness_rewards`)."""
    return correctness_rewards(task, problems, responses)


@register_scorer("eos")
def _eos_scorer(task, problems, responses, *, lengths, finished, max_length):
    """1 when the response ended with a stop token rather than at the length limit."""
    return format_rewards(responses, finished)


@register_scorer("brevity")
def _brevity_scorer(task, problems, responses, *, lengths, finished, max_length):
    """1 - length / max_length: shorter responses score higher (a second, competing objective)."""
    return (1.0 - np.asarray(lengths, np.float32) / float(max_length)).astype(np.float32)


def partial_credit(reference: str, response: str) -> float:
    """Graded credit in [0, 1]: the share of the reference's characters the response reproduces,
    position by position from its start (after whitespace), e.g. reference `"148"`, response `"147"`
    -> 2/3; `"148"` -> 1; `"9"` -> 0. Correlated with exact correctness but fractional."""
    ref, text = reference.strip(), response.lstrip()
    if not ref:
        return 0.0
    return sum(a == b for a, b in zip(ref, text)) / len(ref)


@register_scorer("partial")
def _partial_scorer(task, problems, responses, *, lengths, finished, max_length):
    """`partial_credit` against each problem's reference: a graded, fractional reward."""
    return np.asarray([partial_credit(p.reference, r) for p, r in zip(problems, responses)], np.float32)


def prefix_step_labels(piece_texts: Sequence[Sequence[str]], references: Sequence[str], *,
                       delimiter: str = "", num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ids per response token and a correctness label per step, from the reference answer.

    piece_texts: per response, the decoded text of each of its tokens (eos excluded). A step ends at
    a token whose text contains `delimiter` (every token is a step when `delimiter` is empty). Step
    k is correct when the response text up to the end of step k, stripped, is a prefix of the
    stripped reference: the leading digits a wrong answer got right are correct steps.
    Returns `(step_id [B, num_steps] int32, -1 past the response; step_ok [B, num_steps] bool)`,
    where `num_steps` >= the longest response (one step per token at most).
    """
    b = len(piece_texts)
    step_id = np.full((b, num_steps), -1, np.int32)
    step_ok = np.zeros((b, num_steps), bool)
    for i, (pieces, reference) in enumerate(zip(piece_texts, references)):
        if len(pieces) > num_steps:
            raise ValueError(f"response {i} has {len(pieces)} tokens > num_steps={num_steps}")
        ref, text, step = reference.strip(), "", 0
        for t, piece in enumerate(pieces):
            text += piece
            step_id[i, t] = step
            if not delimiter or delimiter in piece or t == len(pieces) - 1:
                done = text.strip()
                step_ok[i, step] = bool(done) and ref.startswith(done)
                step += 1
    return step_id, step_ok
