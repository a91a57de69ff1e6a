"""Outcome and token advantages: GRPO, Dr.GRPO, RLOO, GAE, plus DAPO's group filter and length penalty.

All outcome estimators map `rewards [B]` and `group_ids [B]` to `advantages [B]` (broadcast to
tokens by the policy losses). `num_groups` is static. Results are `stop_gradient`-ed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.core import check_token_inputs
from jaxrl_llm.objectives.groups import (check_groups, check_rewards_1d, group_count, group_max,
                                         group_mean, group_min, group_std)

Array = jax.Array


def grpo_advantages(rewards: Array, group_ids: Array, *, num_groups: int, norm_by_std: bool = True,
                    unbiased_std: bool = True, eps: float = 1e-6,
                    allow_singleton: bool = False) -> Array:
    """GRPO (arXiv 2402.03300): A_i = (r_i - mean_g r) / (std_g r + eps).

    rewards: [B] float; group_ids: [B] int in [0, num_groups). Returns [B].
    `norm_by_std=False` gives Dr.GRPO's mean-only advantage. Singleton groups (allowed only with
    `allow_singleton`) use mean 0, std 1 and keep their raw reward.
    """
    batch = check_rewards_1d(rewards)
    check_groups(group_ids, batch, num_groups, allow_singleton=allow_singleton)
    rewards = jnp.asarray(rewards, jnp.result_type(rewards, jnp.float32))
    n = group_count(group_ids, num_groups, rewards.dtype)
    mean = jnp.where(n > 1, group_mean(rewards, group_ids, num_groups), 0.0)
    centred = rewards - mean
    if norm_by_std:
        centred = centred / (group_std(rewards, group_ids, num_groups, unbiased=unbiased_std) + eps)
    return jax.lax.stop_gradient(centred)


def drgrpo_advantages(rewards: Array, group_ids: Array, *, num_groups: int,
                      allow_singleton: bool = False) -> Array:
    """Dr.GRPO (arXiv 2503.20783): A_i = r_i - mean_g r (no std division). [B] -> [B]."""
    return grpo_advantages(rewards, group_ids, num_groups=num_groups, norm_by_std=False,
                           allow_singleton=allow_singleton)


def rloo_advantages(rewards: Array, group_ids: Array, *, num_groups: int,
                    allow_singleton: bool = False) -> Array:
    """RLOO (arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g r). [B] -> [B]."""
    batch = check_rewards_1d(rewards)
    check_groups(group_ids, batch, num_groups, allow_singleton=allow_singleton)
    rewards = jnp.asarray(rewards, jnp.result_type(rewards, jnp.float32))
    n = group_count(group_ids, num_groups, rewards.dtype)
    scaled = n / jnp.maximum(n - 1.0, 1.0) * (rewards - group_mean(rewards, group_ids, num_groups))
    return jax.lax.stop_gradient(jnp.where(n > 1, scaled, rewards))


def masked_whiten(x: Array, mask: Array, eps: float = 1e-8) -> Array:
    """Whiten `x [B, T]` with the (unbiased) mean/var of its valid entries; masked entries -> 0."""
    m = mask.astype(x.dtype)
    n = jnp.sum(m)
    mean = jnp.sum(x * m) / jnp.maximum(n, 1.0)
    var = jnp.sum(((x - mean) * m) ** 2) / jnp.maximum(n - 1.0, 1.0)
    return (x - mean) * jax.lax.rsqrt(var + eps) * m


def gae_advantages(token_rewards: Array, values: Array, mask: Array, *, gamma: float = 1.0,
                   lam: float = 0.95, whiten: bool = True) -> tuple[Array, Array]:
    """GAE (arXiv 1506.02438): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}.

    token_rewards, values, mask: [B, T] (mask: 1 on generated tokens). Returns
    `(advantages [B, T], returns [B, T])`. Masked tokens (prompt, observations between turns, the
    tail after a response ends) are skipped: V_{t+1} and A_{t+1} are those of the next valid token
    (0 past the last one), their own rewards and values are ignored, and they get advantage 0 and
    return V_t. Returns are A + V before whitening; `whiten` normalises the advantages over valid
    tokens (returns are never whitened).
    """
    check_token_inputs(token_rewards=token_rewards, values=values, mask=mask)
    dtype = jnp.result_type(token_rewards, values, jnp.float32)
    r = jnp.asarray(token_rewards, dtype).T
    v = jnp.asarray(values, dtype).T
    valid = (jnp.asarray(mask) != 0).T

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, valid_t = xs
        adv = r_t + gamma * next_value - v_t + gamma * lam * next_adv
        # `where`, not arithmetic with the mask: a NaN value on a skipped token must not leak.
        carry = (jnp.where(valid_t, v_t, next_value), jnp.where(valid_t, adv, next_adv))
        return carry, jnp.where(valid_t, adv, 0.0)

    zeros = jnp.zeros(r.shape[1], dtype)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r, v, valid), reverse=True)
    adv = adv.T
    returns = adv + v.T
    if whiten:
        adv = masked_whiten(adv, valid.T.astype(dtype))
    return jax.lax.stop_gradient(adv), jax.lax.stop_gradient(returns)


def dapo_group_keep_mask(rewards: Array, group_ids: Array, *, num_groups: int) -> Array:
    """DAPO dynamic sampling (arXiv 2503.14476): keep_g = max_g r > min_g r. Returns [P] bool.

    Empty groups are not kept. Gather with `keep[group_ids]` for a per-sample [B] mask.
    """
    batch = check_rewards_1d(rewards)
    check_groups(group_ids, batch, num_groups, allow_singleton=True)
    return group_max(rewards, group_ids, num_groups) > group_min(rewards, group_ids, num_groups)


def dapo_overlong_penalty(lengths: Array, *, max_length: int = 20480, cache_length: int = 4096) -> Array:
    """DAPO soft overlong punishment added to the reward. lengths: [B] int -> [B] float.

    0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache inside the cache zone; -1 beyond.
    """
    check_rewards_1d(lengths, "lengths")
    lengths = jnp.asarray(lengths, jnp.float32)
    soft_start = max_length - cache_length
    inside = (soft_start - lengths) / cache_length
    return jnp.where(lengths <= soft_start, 0.0, jnp.where(lengths <= max_length, inside, -1.0))
