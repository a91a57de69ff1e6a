"""Jit-safe per-group statistics over a flat batch: `values [B]`, `group_ids [B]` in 0..P-1.

`num_groups` (P) is a static Python int so the segment reductions have fixed shapes. Groups with
a single member cannot have a baseline; when `group_ids` is concrete (eager call) that raises,
under `jit` the group falls back to mean 0 and std 1, which leaves its value unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.objectives.core import check_per_sequence, check_shape

Array = jax.Array


def concrete_or_none(x):
    """Host copy of `x` when it is concrete, None when it is a tracer (inside jit/vmap/grad)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_groups(group_ids, batch: int, num_groups: int, *, allow_singleton: bool = False,
                 name: str = "group_ids") -> None:
    """Validate `group_ids [B]`; when concrete also check range and group sizes (>= 2)."""
    check_per_sequence(name, group_ids, batch)
    if not jnp.issubdtype(jnp.asarray(group_ids).dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array; got dtype {jnp.asarray(group_ids).dtype}")
    host = concrete_or_none(group_ids)
    if host is None:
        return
    if host.size and (host.min() < 0 or host.max() >= num_groups):
        raise ValueError(f"{name} must lie in [0, num_groups={num_groups}); got range "
                         f"[{host.min()}, {host.max()}]")
    if not allow_singleton:
        counts = np.bincount(host, minlength=num_groups)
        single = np.nonzero(counts == 1)[0]
        if single.size:
            raise ValueError(f"{name}: group {int(single[0])} has one member; a group baseline needs "
                             f">= 2 samples per group (pass allow_singleton=True to leave such samples "
                             f"unnormalised)")


def group_count(group_ids: Array, num_groups: int, dtype=jnp.float32) -> Array:
    """Members per group, gathered back to the batch: [B]."""
    counts = jax.ops.segment_sum(jnp.ones(group_ids.shape, dtype), group_ids, num_segments=num_groups)
    return counts[group_ids]


def group_mean(values: Array, group_ids: Array, num_groups: int) -> Array:
    """Mean of `values [B]` within each sample's group, gathered back: [B]."""
    sums = jax.ops.segment_sum(values, group_ids, num_segments=num_groups)
    counts = jax.ops.segment_sum(jnp.ones_like(values), group_ids, num_segments=num_groups)
    return (sums / jnp.maximum(counts, 1))[group_ids]


def group_std(values: Array, group_ids: Array, num_groups: int, *, unbiased: bool = True) -> Array:
    """Std of `values [B]` within each sample's group (unbiased: n-1 denominator): [B].

    Singleton groups get std 1 (so normalising leaves them unchanged).
    """
    mean = group_mean(values, group_ids, num_groups)
    sq = jax.ops.segment_sum((values - mean) ** 2, group_ids, num_segments=num_groups)[group_ids]
    n = group_count(group_ids, num_groups, values.dtype)
    den = jnp.maximum(n - 1.0, 1.0) if unbiased else jnp.maximum(n, 1.0)
    return jnp.where(n > 1, jnp.sqrt(sq / den), 1.0)


def group_max(values: Array, group_ids: Array, num_groups: int) -> Array:
    """Per-group maximum: [P] (empty groups give -inf)."""
    return jax.ops.segment_max(values, group_ids, num_segments=num_groups)


def group_min(values: Array, group_ids: Array, num_groups: int) -> Array:
    """Per-group minimum: [P] (empty groups give +inf)."""
    return jax.ops.segment_min(values, group_ids, num_segments=num_groups)


def check_rewards_1d(rewards, name: str = "rewards") -> int:
    """Check `rewards [B]`; return B."""
    check_shape(name, rewards, (None,), "[B]")
    return int(jnp.shape(rewards)[0])
