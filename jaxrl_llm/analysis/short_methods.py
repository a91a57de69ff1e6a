"""Pure pieces of three short-spec methods: Skill1 credits, HeavySkill aggregation, Spec-o3 reward.

- Skill1 (arXiv 2605.06130): one policy retrieves, re-ranks, uses and distils skills from a single
  outcome r in {0, 1}. Skill utility is an EMA, U_s <- (1 - 0.05) U_s + 0.05 r; selection credit
  r_sel = U_selected - mean_j U_j over the re-ranked candidates; distillation credit
  r_dist = r - max_j U_j over the retrieved skills; segment rewards exec r, select r + 0.3 r_sel,
  distil r + 0.3 r_dist (each segment then gets its own GRPO advantage).
- HeavySkill (arXiv 2605.02396): K parallel solutions, each trimmed to (ctx - prompt - reserve) / K
  tokens (tail kept, where the answer is), several deliberations over them, final answer = majority of
  the deliberations; RL on deliberations with reward = correctness.
- Spec-o3: r = acc + 0.2 * format, with format = -1 unless the response holds exactly one
  `<answer>...</answer>` whose content has a `\\boxed{c}`, and acc = 1[c = truth].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxrl_llm.envs.math_answer import answers_match, extract_boxed, normalize_answer
from jaxrl_llm.objectives.advantages import grpo_advantages

__all__ = [
    "SKILL1_EMA_RATE",
    "SKILL1_LAMBDA",
    "SPECO3_FORMAT_WEIGHT",
    "HeavySkillResult",
    "Skill1Rewards",
    "SpecO3Reward",
    "any_correct",
    "deliberation_advantages",
    "distillation_credit",
    "heavyskill_aggregate",
    "heavyskill_solution_budget",
    "majority_answer_normalized",
    "selection_credit",
    "skill1_segment_rewards",
    "skill_utility_update",
    "speco3_reward",
    "trim_to_tail",
]

SKILL1_EMA_RATE = 0.05  # Skill1 code config: utility EMA rate
SKILL1_LAMBDA = 0.3  # Skill1 code config: lambda_rerank = lambda_distill
SPECO3_FORMAT_WEIGHT = 0.2  # Spec-o3 code: r = acc + 0.2 * format


# ----------------------------------------------------------------------------- Skill1


def skill_utility_update(utility, reward, rate: float = SKILL1_EMA_RATE):
    """U_s <- (1 - rate) U_s + rate r. utility: scalar or [S] (the skills used); reward: scalar or [S].
    Returns float64 of the broadcast shape (a float for scalars)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"skill_utility_update: rate must lie in (0, 1]; got {rate}")
    out = (1.0 - rate) * np.asarray(utility, np.float64) + rate * np.asarray(reward, np.float64)
    return float(out) if out.ndim == 0 else out


def _utilities(name: str, utilities) -> np.ndarray:
    u = np.asarray(utilities, np.float64)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"{name}: utilities must be a non-empty [k] array; got shape {u.shape}")
    return u


def selection_credit(utilities, selected: int) -> float:
    """r_sel = U_selected - mean_j U_j over the k re-ranked candidates (utilities before this episode's
    update). utilities: [k]; selected: index of the chosen candidate."""
    u = _utilities("selection_credit", utilities)
    if not 0 <= selected < u.size:
        raise ValueError(f"selection_credit: selected must lie in [0, {u.size}); got {selected}")
    return float(u[selected] - u.mean())


def distillation_credit(reward: float, utilities) -> float:
    """r_dist = r - max_j U_j: the new skill is credited only for beating the best retrieved one.
    utilities: [k] of the retrieved skills (before this episode's update)."""
    return float(reward - _utilities("distillation_credit", utilities).max())


class Skill1Rewards(NamedTuple):
    """Per-segment rewards of one Skill1 episode (each segment gets its own GRPO advantage)."""

    execute: float
    select: float
    distill: float


def skill1_segment_rewards(reward: float, r_sel: float, r_dist: float, *, lambda_rerank: float = SKILL1_LAMBDA,
                           lambda_distill: float = SKILL1_LAMBDA) -> Skill1Rewards:
    """exec r; select r + lambda_rerank * r_sel; distil r + lambda_distill * r_dist."""
    return Skill1Rewards(float(reward), float(reward + lambda_rerank * r_sel),
                         float(reward + lambda_distill * r_dist))


# ----------------------------------------------------------------------------- HeavySkill


def heavyskill_solution_budget(context: int, prompt: int, reserve: int, num_solutions: int) -> int:
    """Tokens each cached solution keeps: floor((context - prompt - reserve) / K), at least 1."""
    if num_solutions < 1:
        raise ValueError(f"heavyskill_solution_budget: num_solutions must be >= 1; got {num_solutions}")
    budget = (context - prompt - reserve) // num_solutions
    if budget < 1:
        raise ValueError(f"heavyskill_solution_budget: context {context} - prompt {prompt} - reserve {reserve} "
                         f"leaves no room for {num_solutions} solutions")
    return int(budget)


def trim_to_tail(tokens: Sequence, budget: int) -> list:
    """The last `budget` tokens of a solution: its tail holds the conclusion and the answer."""
    if budget < 1:
        raise ValueError(f"trim_to_tail: budget must be >= 1; got {budget}")
    return list(tokens[-budget:])


def majority_answer_normalized(answers: Sequence[str | None]) -> str | None:
    """Most common answer after `normalize_answer` (so "12" and "12.0" agree), returned as first
    written; a tie goes to the answer seen first; None answers are ignored (all None => None)."""
    keyed = [(normalize_answer(a), a) for a in answers if a is not None]
    if not keyed:
        return None
    counts = Counter(k for k, _ in keyed)
    best = max(counts.values())
    return next(a for k, a in keyed if counts[k] == best)


def any_correct(answers: Sequence[str | None], truth: str) -> float:
    """pass@K of K solutions, all of them scored: 1.0 if any answer matches `truth`, else 0.0."""
    return float(any(answers_match(a, truth) for a in answers))


class HeavySkillResult(NamedTuple):
    """answer: majority of the deliberations; correct: whether it matches the truth; pass_at_k: whether
    any parallel solution did (the ceiling the deliberation could reach)."""

    answer: str | None
    correct: bool
    pass_at_k: float


def heavyskill_aggregate(deliberation_answers: Sequence[str | None], solution_answers: Sequence[str | None],
                         truth: str) -> HeavySkillResult:
    """HeavySkill's final answer (majority of deliberation answers) and the solutions' pass@K."""
    answer = majority_answer_normalized(deliberation_answers)
    return HeavySkillResult(answer, answers_match(answer, truth), any_correct(solution_answers, truth))


def deliberation_advantages(rewards, *, eps: float = 1e-8) -> np.ndarray:
    """GRPO advantages of one problem's deliberations (reward = correctness): (r - mean) / (std + eps),
    unbiased std, via `objectives.grpo_advantages`. rewards: [n >= 2]. Returns [n] float32."""
    r = jnp.asarray(rewards, jnp.float32)
    return np.asarray(grpo_advantages(r, jnp.zeros(r.shape, jnp.int32), num_groups=1, eps=eps))


# ----------------------------------------------------------------------------- Spec-o3

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class SpecO3Reward(NamedTuple):
    """reward = acc + 0.2 * format; answer: the boxed choice that was scored (None if none)."""

    reward: float
    acc: float
    format: float
    answer: str | None


def speco3_reward(response: str, truth: str, *, format_weight: float = SPECO3_FORMAT_WEIGHT) -> SpecO3Reward:
    """Spec-o3's outcome reward.

    Format is ok (0) iff the response has exactly one `<answer>` and one `</answer>`, and the tagged
    content holds a `\\boxed{c}`; any other layout is a format error (-1). The scored choice c is the
    boxed content of the tag when the format is ok, else the last `\\boxed{}` anywhere (so a correct
    but badly formatted response still earns acc = 1). acc compares answers after `normalize_answer`.
    """
    tags = _ANSWER_TAG.findall(response)
    one_tag = len(tags) == 1 and response.count("<answer>") == 1 and response.count("</answer>") == 1
    boxed = extract_boxed(tags[0]) if one_tag else None
    fmt = 0.0 if boxed is not None else -1.0
    choice = boxed if boxed is not None else extract_boxed(response)
    acc = float(answers_match(choice, truth))
    return SpecO3Reward(acc + format_weight * fmt, acc, fmt, choice)
