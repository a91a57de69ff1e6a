"""Reduce a per-token loss matrix `[B, T]` to a scalar ("token- vs sequence-level" matters).

| name                     | formula                                         |
|--------------------------|-------------------------------------------------|
| token-mean               | sum(m l) / sum(m)                               |
| seq-mean-token-mean      | mean over non-empty seqs of sum_t(m l)/sum_t(m) |
| seq-mean-token-sum-norm  | (1/B) sum_i sum_t(m l) / L_norm (Dr.GRPO)       |
| seq-mean-token-sum       | mean over non-empty seqs of sum_t(m l)          |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.core import check_token_inputs, safe_div

Array = jax.Array

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")


def token_mean(loss: Array, mask: Array) -> Array:
    """Mean over all valid tokens of the batch. loss, mask: [B, T] -> scalar."""
    mask = mask.astype(loss.dtype)
    return safe_div(jnp.sum(loss * mask), jnp.sum(mask))


def seq_mean_token_mean(loss: Array, mask: Array) -> Array:
    """Per-sequence token mean, then mean over non-empty sequences. [B, T] -> scalar."""
    mask = mask.astype(loss.dtype)
    lengths = jnp.sum(mask, axis=-1)
    per_seq = safe_div(jnp.sum(loss * mask, axis=-1), lengths)
    return safe_div(jnp.sum(per_seq), jnp.sum(lengths > 0).astype(loss.dtype))


def seq_mean_token_sum_norm(loss: Array, mask: Array, *, norm_length: float) -> Array:
    """Dr.GRPO: (1/B) sum_i sum_t m l / L_norm with a constant L_norm (max generation length)."""
    mask = mask.astype(loss.dtype)
    return jnp.sum(loss * mask) / (loss.shape[0] * norm_length)


def seq_mean_token_sum(loss: Array, mask: Array) -> Array:
    """Per-sequence token sum, then mean over non-empty sequences. [B, T] -> scalar."""
    mask = mask.astype(loss.dtype)
    per_seq = jnp.sum(loss * mask, axis=-1)
    nonempty = jnp.sum(jnp.sum(mask, axis=-1) > 0).astype(loss.dtype)
    return safe_div(jnp.sum(per_seq), nonempty)


def aggregate(loss: Array, mask: Array, mode: str = "token-mean", *, norm_length: float | None = None) -> Array:
    """Reduce `loss [B, T]` under `mask [B, T]` with the named aggregation (see module table).

    `norm_length` is required by (and only used for) "seq-mean-token-sum-norm"; when None it
    defaults to T, the padded length.
    """
    check_token_inputs(loss=loss, mask=mask)
    if mode == "token-mean":
        return token_mean(loss, mask)
    if mode == "seq-mean-token-mean":
        return seq_mean_token_mean(loss, mask)
    if mode == "seq-mean-token-sum-norm":
        return seq_mean_token_sum_norm(loss, mask, norm_length=float(norm_length or loss.shape[1]))
    if mode == "seq-mean-token-sum":
        return seq_mean_token_sum(loss, mask)
    raise ValueError(f"loss_agg_mode must be one of {AGGREGATIONS}; got {mode!r}")
