"""SkillC dual-stream advantages and curriculum (CSCA, arXiv 2605.27899). Formulas RECONSTRUCTED.

Each task x is rolled out with the skill in the prompt (cond z = 1) and without it (z = 0) in the
same update. Advantage = w * global-group z-score + (1 - w) * within-condition z-score + a one-sided
contrastive correction that, while skills still help (gap > 0), rewards skill-free successes and
discounts skill-injected ones. A validation-driven curriculum (agents-analysis.md section 1)
scales the correction (lam_k), sets the share of skill-injected rollouts per skill type (p_with ->
`skillc_allocation`) and retires skill types that stopped helping.
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
    """Curriculum state (a pytree, so it can live in a train state) over S skill types.

    dbar: [S] float32, smoothed validation gap SR_with - SR_without (starts at 0, never optimistic);
    patience: [S] int32, consecutive validations with dbar <= eps_ret;
    active: [S] bool, retirement is monotone (a retired type never comes back);
    ref: [] float32, the largest mean active dbar seen so far (the curriculum's reference gap).
    """

    dbar: Array
    patience: Array
    active: Array
    ref: Array


def skillc_curriculum_init(num_types: int) -> SkillCCurriculum:
    """State for `num_types` skill types: dbar = 0, patience = 0, all active, ref = 0."""
    if isinstance(num_types, bool) or not isinstance(num_types, int) or num_types < 1:
        raise ValueError(f"num_types must be an int >= 1 (number of skill types); got {num_types!r}")
    return SkillCCurriculum(jnp.zeros(num_types, jnp.float32), jnp.zeros(num_types, jnp.int32),
                            jnp.ones(num_types, bool), jnp.zeros((), jnp.float32))


def _mean_active(values: Array, active: Array) -> Array:
    """Mean of `values` [S] over active types; 0 when none is active."""
    return jnp.sum(jnp.where(active, values, 0.0)) / jnp.maximum(jnp.sum(active), 1)


def skillc_curriculum_update(state: SkillCCurriculum, val_gap: Array, *, alpha: float = 0.9,
                             patience: int = 10, eps_ret: float = 0.0, lam: float = 1.0,
                             p_min: float = 0.125, p_max: float = 0.5,
                             eps: float = 1e-6) -> tuple[SkillCCurriculum, Array, Array]:
    """One validation step. val_gap: [S] float, D[s] = SR_with[s] - SR_without[s].

    dbar <- alpha dbar + (1 - alpha) D; patience <- patience + 1 if dbar <= eps_ret else 0;
    active &= patience < `patience`; ref <- max(ref, mean_active(dbar));
    lam_k = lam * clip(mean_active(dbar) / max(ref, eps), 0, 1);
    p_with[s] = clip(0.5 dbar[s] / max(ref, eps), p_min, p_max) for active types, 0 for retired.
    Returns `(state, lam_k [] float32, p_with [S] float32)`. PAPER: alpha, patience, lam;
    RECONSTRUCTED: the ref normalisation, p_min and the streak rule.
    """
    check_per_sequence("val_gap", val_gap, state.dbar.shape[0])
    if patience < 1:
        raise ValueError(f"patience must be >= 1; got {patience}")
    if not 0.0 <= p_min <= p_max:
        raise ValueError(f"need 0 <= p_min <= p_max; got p_min={p_min}, p_max={p_max}")
    dbar = alpha * state.dbar + (1.0 - alpha) * jnp.asarray(val_gap, jnp.float32)
    streak = jnp.where(dbar <= eps_ret, state.patience + 1, 0).astype(jnp.int32)
    active = state.active & (streak < patience)
    mean_dbar = _mean_active(dbar, active)
    ref = jnp.maximum(state.ref, mean_dbar)
    denom = jnp.maximum(ref, eps)
    lam_k = lam * jnp.clip(mean_dbar / denom, 0.0, 1.0)
    p_with = jnp.where(active, jnp.clip(0.5 * dbar / denom, p_min, p_max), 0.0)
    return SkillCCurriculum(dbar, streak, active, ref), lam_k, p_with


def skillc_allocation(p_with: Array, group_size: int) -> Array:
    """Skill-injected rollouts per task group. p_with: [S] from `skillc_curriculum_update`.

    n_with[s] = clip(round_half_up(G p_with[s]), 1, G - 1) for active types (p_with > 0), so every
    group keeps both conditions; 0 for retired types (p_with == 0: all G rollouts skill-free,
    i.e. plain GRPO). Returns [S] int32.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (one rollout per condition); got {group_size!r}")
    p_with = jnp.asarray(p_with, jnp.float32)
    if p_with.ndim != 1:
        raise ValueError(f"p_with must be [S]; got shape {p_with.shape}")
    n = jnp.clip(jnp.floor(group_size * p_with + 0.5), 1, group_size - 1).astype(jnp.int32)
    return jnp.where(p_with > 0, n, 0)
