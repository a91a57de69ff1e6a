"""SkillC dual-stream advantages and curriculum (CSCA, arXiv 2605.27899). Formulas RECONSTRUCTED.

Each task x is rolled out with the skill in the prompt (cond z = 1) and without it (z = 0) in the
same update. Advantage = w * global-group z-score + (1 - w) * within-condition z-score + a one-sided
contrastive correction that, while skills still help (gap > 0), rewards skill-free successes and
discounts skill-injected ones. A validation-driven curriculum scales the correction, the share of
skill-injected rollouts and retires skill types that stopped helping.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.core import check_per_sequence
from jaxrl_llm.objectives.groups import check_groups, check_rewards_1d, group_mean, group_std

Array = jax.Array


def skillc_advantages(rewards: Array, group_ids: Array, cond: Array, *, num_groups: int,
                      attribution: float = 1.0, w: float = 0.4, eps: float = 1e-6,
                      success_threshold: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """Dual-stream SkillC advantage. rewards: [B]; group_ids: [B] task id; cond: [B] 1 = skill-injected.

    A^glob: z-score over all rollouts of the task; A^cond: z-score within (task, condition) (both
    unbiased std + eps); gap(x) = mean(R | z=1) - mean(R | z=0);
    c_i = attribution * max(gap, 0) * 1[R_i > success_threshold] * (+1 if z_i = 0 else -1);
    A = w A^glob + (1 - w) A^cond + c. `attribution` is the curriculum's lambda_k.
    Returns `(advantages [B], metrics)`: frac_corrected, gap_mean.
    """
    b = check_rewards_1d(rewards)
    check_groups(group_ids, b, num_groups)
    check_per_sequence("cond", cond, b)
    cond = jnp.asarray(cond).astype(jnp.int32)
    rewards = jnp.asarray(rewards, jnp.result_type(rewards, jnp.float32))
    glob = (rewards - group_mean(rewards, group_ids, num_groups)) / (
        group_std(rewards, group_ids, num_groups) + eps)
    sub = group_ids * 2 + cond
    within = (rewards - group_mean(rewards, sub, 2 * num_groups)) / (group_std(rewards, sub, 2 * num_groups) + eps)
    # Per task: mean reward of its skill-injected and skill-free rollouts.
    sums = jax.ops.segment_sum(rewards, sub, num_segments=2 * num_groups).reshape(num_groups, 2)
    counts = jax.ops.segment_sum(jnp.ones_like(rewards), sub, num_segments=2 * num_groups).reshape(num_groups, 2)
    means = sums / jnp.maximum(counts, 1)
    paired = jnp.all(counts > 0, axis=-1)
    gap = jnp.where(paired, means[:, 1] - means[:, 0], 0.0)  # [P]
    sign = jnp.where(cond == 0, 1.0, -1.0)
    success = rewards > success_threshold
    correction = attribution * jnp.maximum(gap[group_ids], 0.0) * success * sign
    adv = w * glob + (1.0 - w) * within + correction
    metrics = {"frac_corrected": jnp.mean((correction != 0).astype(rewards.dtype)),
               "gap_mean": jnp.sum(jnp.where(paired, gap, 0.0)) / jnp.maximum(jnp.sum(paired), 1)}
    return jax.lax.stop_gradient(adv), metrics


class SkillCCurriculum(NamedTuple):
    """Curriculum state per skill type S: smoothed validation gap, its first value, streak, active set."""

    gap_ema: Array  # [S] float
    gap_initial: Array  # [S] float
    nonpositive_streak: Array  # [S] int32
    active: Array  # [S] bool


def skillc_curriculum_init(first_val_gap: Array) -> SkillCCurriculum:
    """Start from the first measured validation gap [S] (never an optimistic constant)."""
    gap = jnp.asarray(first_val_gap, jnp.float32)
    return SkillCCurriculum(gap, gap, jnp.zeros(gap.shape, jnp.int32), jnp.ones(gap.shape, bool))


def skillc_curriculum_update(state: SkillCCurriculum, val_gap: Array, *, alpha: float = 0.9,
                             patience: int = 10, attribution: float = 1.0, p_min: float = 0.1,
                             eps: float = 1e-6) -> tuple[SkillCCurriculum, Array, Array]:
    """One validation step. val_gap: [S] = SR_with - SR_without per skill type.

    gap_ema <- alpha gap_ema + (1 - alpha) val_gap; a skill type is retired for good after
    `patience` consecutive non-positive smoothed gaps. Returns `(state, attribution_k [S],
    p_with [S])` with attribution_k = attribution * clip(gap_ema / max(gap_initial, eps), 0, 1)
    and p_with = clip(0.5 * the same ratio, p_min, 0.5); both 0 for retired types.
    RECONSTRUCTED: the two clip schedules, p_min and the streak rule.
    """
    check_per_sequence("val_gap", val_gap, state.gap_ema.shape[0])
    ema = alpha * state.gap_ema + (1.0 - alpha) * jnp.asarray(val_gap, jnp.float32)
    streak = jnp.where(ema <= 0, state.nonpositive_streak + 1, 0)
    active = state.active & (streak < patience)
    scale = jnp.clip(ema / jnp.maximum(state.gap_initial, eps), 0.0, 1.0)
    attribution_k = jnp.where(active, attribution * scale, 0.0)
    p_with = jnp.where(active, jnp.clip(0.5 * scale, p_min, 0.5), 0.0)
    return SkillCCurriculum(ema, state.gap_initial, streak, active), attribution_k, p_with
