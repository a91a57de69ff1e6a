"""TBPO, Trust-Band Policy Optimization (QaRL, arXiv 2604.07853): GSPO for quantized rollouts.

The sampler (low-bit rollout engine) and the learner disagree on log-probs. TBPO
1. weights each sequence by the detached, capped sampler/learner mismatch ratio
   w_i = min(exp(mean_t m (prox_logp - rollout_logp)), C);
2. clips positive-advantage sequences like GSPO;
3. keeps negative-advantage sequences only inside a two-sided trust band of the sequence ratio and
   drops (zero loss, zero gradient) those outside, stopping runaway "error token" ratios.

RECONSTRUCTED choices (flags): `clip_low` for positives (GSPO's 3e-4), `weight_mode` (w multiplies
the objective, "loss", or the ratio, "ratio"), `drop_positive_outside_band`, and
`renormalize_dropped` (whether dropped sequences leave the seq-mean denominator).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.aggregation import seq_mean_token_mean
from jaxrl_llm.objectives.core import (LossOutput, broadcast_advantages, check_token_inputs, masked_mean)
from jaxrl_llm.objectives.policy_losses import gspo_token_ratio, sequence_log_ratio

Array = jax.Array


def tbpo_mismatch_weight(prox_logp: Array, rollout_logp: Array, mask: Array, *, cap: float = 2.0) -> Array:
    """Sequence mismatch weight min(exp(mean_t m (prox - rollout)), cap), detached. [B, T] -> [B]."""
    seq_lr, _ = sequence_log_ratio(prox_logp, rollout_logp, mask)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(jnp.minimum(seq_lr, 20.0)), cap))


def tbpo_loss(logp: Array, old_logp: Array, rollout_logp: Array, advantages: Array, mask: Array, *,
              clip_low: float = 3e-4, clip_high: float = 4e-4, neg_clip_low: float = 3e-4,
              neg_clip_high: float = 7e-4, weight_cap: float = 2.0, weight_mode: str = "loss",
              drop_positive_outside_band: bool = False, renormalize_dropped: bool = False) -> LossOutput:
    """TBPO loss -(1/B') sum_i J_i with the GSPO-token gradient.

    logp: [B, T] learner log-probs (grad); old_logp: [B, T] proximal learner log-probs recomputed
    before the update; rollout_logp: [B, T] sampler log-probs; advantages: [B]; mask: [B, T].
    A_i >= 0: J_i = w_i min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i).
    A_i < 0:  J_i = w_i s_i A_i if 1 - neg_clip_low <= s_i <= 1 + neg_clip_high, else dropped.
    Metrics: frac_dropped_neg, frac_clipped_pos, mean_w, frac_w_capped, seq_kl, mismatch_kl.
    """
    b, t = check_token_inputs(logp=logp, old_logp=old_logp, rollout_logp=rollout_logp, mask=mask)
    if weight_mode not in ("loss", "ratio"):
        raise ValueError(f"weight_mode must be 'loss' or 'ratio'; got {weight_mode!r}")
    adv_bt = jax.lax.stop_gradient(broadcast_advantages(advantages, b, t)).astype(logp.dtype)
    adv = adv_bt[:, 0]
    maskf = mask.astype(logp.dtype)
    old_logp = jax.lax.stop_gradient(old_logp)
    rollout_logp = jax.lax.stop_gradient(rollout_logp)

    seq_lr, lengths = sequence_log_ratio(logp, old_logp, maskf)
    s = jax.lax.stop_gradient(jnp.exp(seq_lr))
    ratio = gspo_token_ratio(logp, seq_lr)  # [B, T]: value s_i, gradient through logp_t
    w = tbpo_mismatch_weight(old_logp, rollout_logp, maskf, cap=weight_cap)
    if weight_mode == "ratio":
        ratio, scale, s_eff = ratio * w[:, None], jnp.ones_like(w), s * w
    else:
        scale, s_eff = w, s

    a = adv_bt
    pos_obj = jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * a)
    in_band = (s_eff >= 1.0 - neg_clip_low) & (s_eff <= 1.0 + neg_clip_high)
    negative = adv < 0
    dropped = (negative | drop_positive_outside_band) & ~in_band
    obj = jnp.where(negative[:, None], ratio * a, pos_obj)
    obj = jnp.where(dropped[:, None], 0.0, obj) * scale[:, None]

    seq_valid = lengths > 0
    agg_mask = maskf * (~dropped)[:, None] if renormalize_dropped else maskf
    loss = -seq_mean_token_mean(obj, agg_mask)

    valid_f = seq_valid.astype(logp.dtype)
    pos_clipped = (adv > 0) & (s_eff > 1.0 + clip_high)  # A > 0: only the upper side binds
    metrics = {
        "frac_dropped_neg": masked_mean((dropped & negative).astype(logp.dtype), valid_f),
        "frac_clipped_pos": masked_mean(pos_clipped.astype(logp.dtype), valid_f),
        "mean_w": masked_mean(w, valid_f),
        "frac_w_capped": masked_mean((w >= weight_cap).astype(logp.dtype), valid_f),
        "seq_kl": masked_mean(jax.lax.stop_gradient(-seq_lr), valid_f),
        "mismatch_kl": masked_mean(rollout_logp - old_logp, maskf),
    }
    return LossOutput(loss, metrics)
