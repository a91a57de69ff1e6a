"""Next-token cross-entropy on supervised tokens, for SFT.

Logits at position t predict the token at t + 1. A target counts when `loss_mask` is 1 at t + 1
and t, t + 1 belong to the same non-padding segment (a packed row never predicts across a segment
boundary). The function returns the *sum* of token losses and the token count, so callers can
normalise over a whole batch split into micro-batches and get exactly the full-batch mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def next_token_weights(loss_mask: Array, segment_ids: Array) -> Array:
    """`[B, T-1]` float32 weights of the targets `tokens[:, 1:]` (see module docstring)."""
    if loss_mask.shape != segment_ids.shape or loss_mask.ndim != 2:
        raise ValueError(
            f"loss_mask and segment_ids must be equal [B, T]; got {loss_mask.shape} and {segment_ids.shape}"
        )
    same_segment = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    return (loss_mask[:, 1:] > 0).astype(jnp.float32) * same_segment.astype(jnp.float32)


def masked_next_token_loss(
    logits: Array, tokens: Array, loss_mask: Array, segment_ids: Array
) -> tuple[Array, Array, Array]:
    """Summed cross-entropy of supervised next tokens.

    Args:
      logits: `[B, T, V]` float, the model output for `tokens`.
      tokens: `[B, T]` int, the input (and shifted target) tokens.
      loss_mask: `[B, T]`, 1 on supervised tokens.
      segment_ids: `[B, T]` int, packing segments (0 = padding).
    Returns:
      `(loss_sum, num_tokens, num_correct)`: float32 scalars; `num_correct` counts supervised
      targets whose argmax prediction is right.
    """
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits must be [B, T, V] with [B, T] = {tokens.shape}; got {logits.shape}")
    weights = next_token_weights(loss_mask, segment_ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = tokens[:, 1:]
    target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
    return -jnp.sum(target_logp * weights), jnp.sum(weights), jnp.sum(correct * weights)
