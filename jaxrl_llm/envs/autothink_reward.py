"""AutoThink's reward (arXiv 2505.10832) as the registered scorer `autothink`.

Per response: the base reward (think +1 / 0, no-think +2 / -1, format error 0, -2 for a degenerate
negative); then the stage's batch shaping: stage 1 pulls the over-represented mode toward
penalising targets (batch balance, b = `balance_rate`), stage 2 is the base reward alone, stage 3
adds the per-group length terms (alpha, beta). The math is `objectives/autothink.py`'s; this module
reads the text and the schedule. Settings live in `rl.autothink` (`DEFAULT_OPTIONS`):

    rl.scorers = ("autothink",)
    rl.autothink.stage = 0            # 1, 2 or 3: that stage throughout; 0: follow stage_ends
    rl.autothink.stage_ends = (10, 20)  # stage 1 on steps [0, 10), stage 2 on [10, 20), stage 3 after

Mode and correctness come from the task's `think_facts(problem, response)` when it has one
(`envs/autothink_mix.py`), else from `score >= 1`, `thinking.is_no_think` and a closed `</think>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxrl_llm.envs.rewards import register_scorer
from jaxrl_llm.envs.thinking import has_degenerate_repetition, is_no_think, split_think
from jaxrl_llm.objectives.autothink import (
    autothink_base_reward,
    autothink_batch_balance,
    autothink_degeneration_penalty,
    autothink_length_bonus,
)

__all__ = ["DEFAULT_OPTIONS", "autothink_rewards", "check_options", "mode_metrics", "response_facts", "stage_at"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "stage": 1,  # 1, 2, 3 fixed; 0 = follow stage_ends
    "stage_ends": (),  # steps at which stage 1 (then stage 2) ends
    "balance_rate": 0.5,  # b of stage 1: a mode above this share of the batch is pulled down
    "alpha": 0.05,  # stage 3: length term of correct responses (shorter is better)
    "beta": 0.05,  # stage 3: length term of wrong responses (longer is better)
}


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_OPTIONS)
    merged.update(dict(options or {}))
    return merged


def check_options(options: Mapping[str, Any] | None) -> None:
    """Raise `ValueError` naming the `rl.autothink` field that is unknown or out of range."""
    unknown = sorted(set(dict(options or {})) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"rl.autothink.{unknown[0]} is not an AutoThink setting; it takes {sorted(DEFAULT_OPTIONS)}")
    o = _options(options)
    if int(o["stage"]) not in (0, 1, 2, 3):
        raise ValueError(f"rl.autothink.stage must be 1, 2 or 3 (or 0: follow stage_ends); got {o['stage']}")
    ends = [int(e) for e in tuple(o["stage_ends"])]
    if int(o["stage"]) == 0 and not 1 <= len(ends) <= 2:
        raise ValueError("rl.autothink.stage=0 follows rl.autothink.stage_ends, which must hold 1 or 2 steps "
                         f"(the ends of stage 1 and stage 2); got {tuple(o['stage_ends'])}")
    if any(e < 0 for e in ends) or ends != sorted(ends):
        raise ValueError(f"rl.autothink.stage_ends must be non-decreasing steps >= 0; got {tuple(o['stage_ends'])}")
    if not 0.0 < float(o["balance_rate"]) <= 1.0:
        raise ValueError(f"rl.autothink.balance_rate must be in (0, 1]; got {o['balance_rate']}")
    for name in ("alpha", "beta"):
        if float(o[name]) < 0:
            raise ValueError(f"rl.autothink.{name} must be >= 0; got {o[name]}")


def stage_at(step: int, *, stage: int, stage_ends: Sequence[int]) -> int:
    """The stage of RL step `step`: `stage` when > 0, else 1 + the number of `stage_ends` <= step."""
    if int(stage) > 0:
        return int(stage)
    return 1 + sum(int(step) >= int(e) for e in stage_ends)


def autothink_rewards(correct, no_think, format_ok, degenerate, lengths, group_ids, *, num_groups: int,
                      stage: int, balance_rate: float = 0.5, alpha: float = 0.05,
                      beta: float = 0.05) -> tuple[np.ndarray, float]:
    """The stage's shaped rewards `[B]` float32 and the stage-1 lambda (0 in stages 2 and 3).

    correct, no_think, format_ok, degenerate: `[B]` bool; lengths: `[B]` response tokens;
    group_ids: `[B]` int prompt index in `[0, num_groups)`.
    """
    think = ~np.asarray(no_think, bool)
    rewards = autothink_base_reward(correct, think, format_ok)
    rewards = autothink_degeneration_penalty(rewards, degenerate)
    lam = 0.0
    if stage == 1:
        rewards, metrics = autothink_batch_balance(rewards, correct, think, balance_rate=balance_rate)
        lam = float(metrics["balance_lambda"])
    elif stage == 3:
        # verl's group baseline follows, so only the within-group length ranking matters.
        rewards = rewards + autothink_length_bonus(lengths, correct, np.asarray(group_ids, np.int32),
                                                   num_groups=num_groups, alpha=alpha, beta=beta)
    return np.asarray(rewards, np.float32), lam


def response_facts(task: Any, problem: Any, response: str) -> tuple[bool, bool, bool]:
    """`(correct, no_think, format_ok)` of one response (see the module docstring)."""
    facts = getattr(task, "think_facts", None)
    if facts is not None:
        return tuple(facts(problem, response))
    answer = split_think(response).answer
    return (float(task.score(problem, response)) >= 1.0, is_no_think(problem.prompt + response, response),
            answer is not None and bool(answer.strip()))


def mode_metrics(problems: Sequence[Any], correct, no_think, lengths) -> dict[str, float]:
    """Think rate, accuracy and mean length, overall, per mode and per `metadata["difficulty"]`.

    problems: `[B]` (one per response); correct, no_think: `[B]` bool; lengths: `[B]`.
    """
    correct, no_think = np.asarray(correct, bool), np.asarray(no_think, bool)
    lengths = np.asarray(lengths, np.float64)
    out = {"think_rate": float(np.mean(~no_think)), "accuracy": float(np.mean(correct)),
           "length": float(np.mean(lengths))}
    for mode, rows in (("think", ~no_think), ("no_think", no_think)):
        if rows.any():
            out[f"accuracy/{mode}"] = float(correct[rows].mean())
    difficulty = np.asarray([str(p.metadata.get("difficulty", "")) for p in problems])
    for d in sorted(set(difficulty) - {""}):
        rows = difficulty == d
        out.update({f"think_rate/{d}": float(np.mean(~no_think[rows])), f"accuracy/{d}": float(correct[rows].mean()),
                    f"length/{d}": float(lengths[rows].mean())})
    return out


@register_scorer("autothink", check=check_options)
def autothink_scorer(task, problems, responses, *, lengths, finished, max_length, group_ids, step, options):
    """AutoThink's staged reward `[B]` and its metrics (`autothink/...`); see the module docstring."""
    o = _options(options)
    facts = np.asarray([response_facts(task, p, r) for p, r in zip(problems, responses)], bool).reshape(-1, 3)
    correct, no_think, format_ok = facts[:, 0], facts[:, 1], facts[:, 2]
    degenerate = np.asarray([has_degenerate_repetition(r) for r in responses], bool)
    stage = stage_at(step, stage=int(o["stage"]), stage_ends=tuple(o["stage_ends"]))
    group_ids = np.asarray(group_ids, np.int32)
    rewards, lam = autothink_rewards(correct, no_think, format_ok, degenerate, lengths, group_ids,
                                     num_groups=int(group_ids.max()) + 1 if len(group_ids) else 0, stage=stage,
                                     balance_rate=float(o["balance_rate"]), alpha=float(o["alpha"]),
                                     beta=float(o["beta"]))
    metrics = {"stage": float(stage), "balance_lambda": lam, "format_errors": float(np.mean(~format_ok)),
               "degenerate": float(np.mean(degenerate)), **mode_metrics(problems, correct, no_think, lengths)}
    return rewards, {f"autothink/{k}": v for k, v in metrics.items()}
