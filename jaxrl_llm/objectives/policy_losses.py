"""Clipped policy-gradient surrogates: PPO clip, dual-clip, DAPO clip-higher, GSPO, and PPO's value loss.

Inputs: `logp [B, T]` (current policy, carries the gradient), `old_logp [B, T]` (behaviour policy),
`advantages [B]` or `[B, T]`, `mask [B, T]`. Old log-probs and advantages are stop-gradient-ed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.aggregation import aggregate
from jaxrl_llm.objectives.core import (LossOutput, broadcast_advantages, check_token_inputs,
                                       clamped_ratio, masked_mean, safe_div)

Array = jax.Array


def clipped_token_loss(ratio: Array, advantages: Array, *, clip_low: float, clip_high: float,
                       dual_clip: float | None = None) -> tuple[Array, Array, Array]:
    """Per-token -min(rho A, clip(rho) A), optionally dual-clipped at -c A for A < 0.

    Returns `(loss [B, T], clipped [B, T] bool, lower_capped [B, T] bool)`.
    """
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    lower_capped = jnp.zeros_like(is_clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1; got {dual_clip}")
        cap = -advantages * dual_clip
        lower_capped = (advantages < 0) & (loss > cap)
        loss = jnp.where(advantages < 0, jnp.minimum(loss, cap), loss)
    return loss, is_clipped, lower_capped


def ppo_clip_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                  clip_low: float = 0.2, clip_high: float | None = None, dual_clip: float | None = None,
                  loss_agg_mode: str = "token-mean", norm_length: float | None = None) -> LossOutput:
    """PPO clipped surrogate (arXiv 1707.06347) with optional clip-higher and dual-clip.

    l_t = -min(rho_t A_t, clip(rho_t, 1 - clip_low, 1 + clip_high) A_t), rho = exp(logp - old_logp)
    (log clamped to +-20). `clip_high=None` means symmetric. `dual_clip=c` caps the loss of A < 0
    tokens at -c A. Metrics: pg_clipfrac, pg_clipfrac_lower (share of all valid tokens with an
    active dual-clip cap), ppo_kl = mean(old_logp - logp).
    """
    b, t = check_token_inputs(logp=logp, old_logp=old_logp, mask=mask)
    adv = jax.lax.stop_gradient(broadcast_advantages(advantages, b, t)).astype(logp.dtype)
    ratio, log_ratio = clamped_ratio(logp, jax.lax.stop_gradient(old_logp))
    high = clip_low if clip_high is None else clip_high
    loss, is_clipped, lower = clipped_token_loss(ratio, adv, clip_low=clip_low, clip_high=high,
                                                 dual_clip=dual_clip)
    maskf = mask.astype(logp.dtype)
    metrics = {
        "pg_clipfrac": masked_mean(is_clipped.astype(logp.dtype), maskf),
        "pg_clipfrac_lower": masked_mean(lower.astype(logp.dtype), maskf),
        "ppo_kl": masked_mean(jax.lax.stop_gradient(-log_ratio), maskf),
    }
    return LossOutput(aggregate(loss, maskf, loss_agg_mode, norm_length=norm_length), metrics)


def dual_clip_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                   clip_low: float = 0.2, clip_high: float | None = None, clip_ratio_c: float = 3.0,
                   loss_agg_mode: str = "token-mean") -> LossOutput:
    """Dual-clip PPO (arXiv 1912.09729): PPO clip, and for A < 0 the loss is capped at -c A."""
    return ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                         dual_clip=clip_ratio_c, loss_agg_mode=loss_agg_mode)


def dapo_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_low: float = 0.2,
              clip_high: float = 0.28, loss_agg_mode: str = "token-mean") -> LossOutput:
    """DAPO (arXiv 2503.14476): clip-higher band [1 - 0.2, 1 + 0.28] and token-mean, no KL."""
    return ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                         loss_agg_mode=loss_agg_mode)


def sequence_log_ratio(logp: Array, old_logp: Array, mask: Array) -> tuple[Array, Array]:
    """Length-normalised sequence log-ratio (1/|y|) sum_t m (logp - old_logp): returns ([B], lengths [B])."""
    maskf = mask.astype(logp.dtype)
    lengths = jnp.sum(maskf, axis=-1)
    return safe_div(jnp.sum((logp - old_logp) * maskf, axis=-1), lengths), lengths


def gspo_token_ratio(logp: Array, seq_log_ratio: Array, *, max_log: float = 10.0) -> Array:
    """GSPO-token ratio s_{i,t} = sg(s_i) exp(logp_t - sg(logp_t)): value s_i, gradient s_i dlogp_t. [B, T]."""
    log_s = jnp.minimum(jax.lax.stop_gradient(seq_log_ratio)[:, None] + logp - jax.lax.stop_gradient(logp),
                        max_log)
    return jnp.exp(log_s)


def gspo_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_low: float = 3e-4,
              clip_high: float = 4e-4, loss_agg_mode: str = "seq-mean-token-mean") -> LossOutput:
    """GSPO (arXiv 2507.18071): sequence ratio s_i = exp(mean_t m (logp - old_logp)), clipped per sequence.

    The token-level form (value s_i per token, gradient through each logp_t) aggregated by
    seq-mean-token-mean equals the sequence objective. advantages: [B] (or [B, T], constant per row).
    Metrics: pg_clipfrac (share of clipped sequences), seq_ratio_mean.
    """
    b, t = check_token_inputs(logp=logp, old_logp=old_logp, mask=mask)
    adv = jax.lax.stop_gradient(broadcast_advantages(advantages, b, t)).astype(logp.dtype)
    old_logp = jax.lax.stop_gradient(old_logp)
    maskf = mask.astype(logp.dtype)
    seq_lr, lengths = sequence_log_ratio(logp, old_logp, maskf)
    ratio = gspo_token_ratio(logp, seq_lr)
    loss, is_clipped, _ = clipped_token_loss(ratio, adv, clip_low=clip_low, clip_high=clip_high)
    seq_valid = (lengths > 0).astype(logp.dtype)
    seq_clipped = jnp.any(is_clipped & (maskf > 0), axis=-1).astype(logp.dtype)
    metrics = {
        "pg_clipfrac": masked_mean(seq_clipped, seq_valid),
        "seq_ratio_mean": masked_mean(jax.lax.stop_gradient(jnp.exp(seq_lr)), seq_valid),
        "ppo_kl": masked_mean(jax.lax.stop_gradient(-seq_lr), seq_valid),
    }
    return LossOutput(aggregate(loss, maskf, loss_agg_mode), metrics)


def value_loss(values: Array, old_values: Array, returns: Array, mask: Array, *, clip: float = 0.2,
               loss_agg_mode: str = "token-mean") -> LossOutput:
    """PPO clipped value loss 0.5 max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-eps).

    All inputs [B, T]. Metrics: vf_clipfrac.
    """
    check_token_inputs(values=values, old_values=old_values, returns=returns, mask=mask)
    old_values = jax.lax.stop_gradient(old_values)
    returns = jax.lax.stop_gradient(returns)
    v_clip = old_values + jnp.clip(values - old_values, -clip, clip)
    plain, clipped = (values - returns) ** 2, (v_clip - returns) ** 2
    loss = 0.5 * jnp.maximum(plain, clipped)
    maskf = mask.astype(values.dtype)
    return LossOutput(aggregate(loss, maskf, loss_agg_mode),
                      {"vf_clipfrac": masked_mean((clipped > plain).astype(values.dtype), maskf)})


def vanilla_pg_loss(logp: Array, advantages: Array, mask: Array, *,
                    loss_agg_mode: str = "token-mean") -> LossOutput:
    """REINFORCE surrogate -A_t logp_t (the gradient every clipped loss reduces to at ratio 1)."""
    b, t = check_token_inputs(logp=logp, mask=mask)
    adv = jax.lax.stop_gradient(broadcast_advantages(advantages, b, t)).astype(logp.dtype)
    return LossOutput(aggregate(-adv * logp, mask.astype(logp.dtype), loss_agg_mode), {})

