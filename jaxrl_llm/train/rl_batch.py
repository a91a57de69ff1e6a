"""`RolloutBatch`: the arrays one RL update consumes, and how to build one from sampled responses.

Layout: each row is `[left-padded prompt | response | padding]`, `[B, T]` with `T = P + N`. Token
arrays follow `TokenBatch` (`tokens`, `positions`, `segment_ids` with 0 on padding, `loss_mask` 1
on generated tokens only). Per-token log-probs are aligned with `tokens`: entry `t` is the
log-prob of `tokens[:, t]` given the tokens before it (0 where `loss_mask` is 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = Any  # jax.Array or np.ndarray: the batch is built on the host and used on device

TOKEN_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask", "old_logprobs", "rollout_logprobs")


@struct.dataclass
class RolloutBatch:
    """One rollout batch.

    tokens, positions, segment_ids: [B, T] int32 (segment 0 = padding, never attended).
    loss_mask: [B, T] float32, 1 on response tokens (the generated answer and its eos).
    old_logprobs: [B, T] float32, log pi_old(token) under the learner before the update.
    rollout_logprobs: [B, T] float32, log-probs as the sampler drew them (quantized or not).
    rewards: [B] or [B, R] float32; group_ids: [B] int32 (prompt index).
    advantages: [B] (outcome) or [B, T] (per-token) float32.
    ref_logprobs: optional [B, T] float32, frozen reference policy (KL terms).
    """

    tokens: Array
    positions: Array
    segment_ids: Array
    loss_mask: Array
    old_logprobs: Array
    rollout_logprobs: Array
    rewards: Array
    group_ids: Array
    advantages: Array
    ref_logprobs: Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.tokens))  # type: ignore[return-value]


def check_rollout_batch(batch: RolloutBatch) -> tuple[int, int]:
    """Raise `ValueError` naming the field unless every array has its documented shape; return (B, T)."""
    shape = np.shape(batch.tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [B, T]; got {tuple(shape)}")
    b, t = shape
    fields = TOKEN_FIELDS + (() if batch.ref_logprobs is None else ("ref_logprobs",))
    for name in fields:
        got = tuple(np.shape(getattr(batch, name)))
        if got != (b, t):
            raise ValueError(f"{name} must be [B, T] = {(b, t)}; got {got}")
    rewards = tuple(np.shape(batch.rewards))
    if rewards not in ((b,),) and not (len(rewards) == 2 and rewards[0] == b):
        raise ValueError(f"rewards must be [B] or [B, R] with B={b}; got {rewards}")
    if tuple(np.shape(batch.group_ids)) != (b,):
        raise ValueError(f"group_ids must be [B] = ({b},); got {tuple(np.shape(batch.group_ids))}")
    adv = tuple(np.shape(batch.advantages))
    if adv not in ((b,), (b, t)):
        raise ValueError(f"advantages must be [B] or [B, T] with B={b}, T={t}; got {adv}")
    return b, t


def split_minibatches(batch: RolloutBatch, num_minibatches: int) -> RolloutBatch:
    """Every leaf `[B, ...]` -> `[M, B / M, ...]`; minibatch m holds rows m, m + M, m + 2M, ...

    Strided rows spread each minibatch over the batch-sharded devices and over prompt groups.
    """
    b = batch.shape[0]
    if num_minibatches < 1 or b % num_minibatches:
        raise ValueError(f"rl.minibatches={num_minibatches} must divide the rollout batch size {b}")
    m = num_minibatches
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1), batch)


def assemble_token_arrays(prompt_tokens: np.ndarray, prompt_lengths: np.ndarray, response: np.ndarray,
                          response_lengths: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Token arrays of `[left-padded prompt | response]` rows.

    prompt_tokens: [B, P] left-padded; prompt_lengths: [B]; response: [B, N] sampled ids;
    response_lengths: [B] generated tokens kept (eos included). Returns `{tokens, positions,
    segment_ids, loss_mask}` each [B, P + N]; tokens past a response's length become `pad_id`.
    """
    b, p = prompt_tokens.shape
    n = response.shape[1]
    slot = np.arange(p + n)[None, :]
    start = (p - prompt_lengths)[:, None]
    end = (p + response_lengths)[:, None]
    valid = (slot >= start) & (slot < end)
    tokens = np.concatenate([prompt_tokens, response], axis=1).astype(np.int32)
    tokens = np.where(valid, tokens, pad_id).astype(np.int32)
    positions = np.where(valid, slot - start, 0).astype(np.int32)
    loss_mask = (valid & (slot >= p)).astype(np.float32)
    return {"tokens": tokens, "positions": positions, "segment_ids": valid.astype(np.int32), "loss_mask": loss_mask}


def response_to_token_axis(values: np.ndarray, prompt_width: int, loss_mask: np.ndarray) -> np.ndarray:
    """`[B, N]` per-response-token values -> `[B, P + N]` aligned with tokens (0 off the loss mask)."""
    b = values.shape[0]
    full = np.concatenate([np.zeros((b, prompt_width), np.float32), values.astype(np.float32)], axis=1)
    return np.where(loss_mask > 0, full, 0.0).astype(np.float32)
