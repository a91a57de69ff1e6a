"""Composable loss terms: KL-to-reference penalties (k1/k2/k3), entropy bonus, and `compose`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.aggregation import aggregate
from jaxrl_llm.objectives.core import LOG_RATIO_CLAMP, LossOutput, check_token_inputs

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Array, ref_logp: Array, *, kind: str = "k3") -> Array:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled-token log-probs. [B, T] -> [B, T].

    k1 = logp - ref; k2 = (logp - ref)^2 / 2; k3 = exp(ref - logp) - (ref - logp) - 1 with the log
    difference clamped to +-20 and the result to [-10, 10] (low-variance, always >= 0).
    """
    check_token_inputs(logp=logp, ref_logp=ref_logp)
    ref_logp = jax.lax.stop_gradient(ref_logp)
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff**2
    if kind == "k3":
        log_r = jnp.clip(-diff, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return jnp.clip(jnp.exp(log_r) - log_r - 1.0, -10.0, 10.0)
    raise ValueError(f"kind must be one of {KL_ESTIMATORS}; got {kind!r}")


def kl_penalty(logp: Array, ref_logp: Array, mask: Array, *, coef: float = 1e-3, kind: str = "k3",
               loss_agg_mode: str = "token-mean") -> LossOutput:
    """coef * aggregate(KL_t) as a loss term. logp, ref_logp, mask: [B, T].

    Metrics: `kl` (the aggregated KL before the coefficient).
    """
    check_token_inputs(logp=logp, ref_logp=ref_logp, mask=mask)
    kl = aggregate(kl_estimate(logp, ref_logp, kind=kind), mask, loss_agg_mode)
    return LossOutput(coef * kl, {"kl": kl})


def entropy_bonus(entropy: Array, mask: Array, *, coef: float = 1e-3,
                  loss_agg_mode: str = "token-mean") -> LossOutput:
    """-coef * aggregate(entropy) as a loss term (rewards exploration). entropy, mask: [B, T]."""
    check_token_inputs(entropy=entropy, mask=mask)
    ent = aggregate(entropy, mask, loss_agg_mode)
    return LossOutput(-coef * ent, {"entropy": ent})


def compose(**terms: LossOutput) -> LossOutput:
    """Sum named loss terms; metrics become `{name}/{metric}` plus `{name}/loss` for each term.

    Example: `compose(pg=ppo_clip_loss(...), kl=kl_penalty(...), sdar=sdar_aux_loss(...))`.
    """
    if not terms:
        raise ValueError("compose needs at least one named LossOutput")
    total = 0.0
    metrics: dict[str, Array] = {}
    for name, term in terms.items():
        if not isinstance(term, LossOutput):
            raise ValueError(f"term {name!r} must be a LossOutput; got {type(term).__name__}")
        total = total + term.loss
        metrics[f"{name}/loss"] = term.loss
        metrics.update({f"{name}/{k}": v for k, v in term.metrics.items()})
    return LossOutput(jnp.asarray(total), metrics)
