"""`RolloutBatch`: the arrays one RL update consumes, and how to build one from sampled responses.

Layout: each row is `[left-padded prompt | response | padding]`, `[B, T]` with `T = P + N`. Token
arrays follow `TokenBatch` (`tokens`, `positions`, `segment_ids` with 0 on padding, `loss_mask` 1
on generated tokens only). Per-token log-probs are aligned with `tokens`: entry `t` is the
log-prob of `tokens[:, t]` given the tokens before it (0 where `loss_mask` is 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import struct

from jaxrl_llm.data.batch import TokenBatch
from jaxrl_llm.parallel.batch import split_strided
from jaxrl_llm.rollout.prompts import span_layout

Array = Any  # jax.Array or np.ndarray: the batch is built on the host and used on device

TOKEN_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask", "old_logprobs", "rollout_logprobs")
OPTIONAL_TOKEN_FIELDS = ("ref_logprobs", "teacher_logprobs", "old_values", "returns", "step_id")


@struct.dataclass
class RolloutBatch(TokenBatch):
    """One rollout batch: a `TokenBatch` (tokens, positions, segment_ids, loss_mask `[B, T]`) plus

    loss_mask: [B, T] float32, 1 on response tokens (the generated answer and its eos).
    old_logprobs: [B, T] float32, log pi_old(token) under the learner before the update.
    rollout_logprobs: [B, T] float32, log-probs as the sampler drew them (quantized or not).
    rewards: [B] or [B, R] float32; group_ids: [B] int32 (prompt index).
    advantages: [B] (outcome) or [B, T] (per-token) float32.
    Optional (None unless a role produces them):
    ref_logprobs: [B, T] frozen reference policy (KL terms);
    teacher_logprobs: [B, T] teacher log-prob of each sampled token;
    teacher_topk_idx: [B, T, k] int32 and teacher_topk_logp: [B, T, k], the teacher's top-k next tokens;
    old_values, returns: [B, T] critic values before the update and GAE returns;
    cond: [B] int32 condition flag (1 = the sample saw the privileged prompt);
    step_id: [B, T] int32 (-1 outside a step) and step_ok: [B, K] bool, process labels per step;
    aux_scale: [B] float32, per-row weight of an auxiliary term (SDAR's warm-down, `sdar_warmdown`).
    """

    old_logprobs: Array = None
    rollout_logprobs: Array = None
    rewards: Array = None
    group_ids: Array = None
    advantages: Array = None
    ref_logprobs: Array | None = None
    teacher_logprobs: Array | None = None
    teacher_topk_idx: Array | None = None
    teacher_topk_logp: Array | None = None
    old_values: Array | None = None
    returns: Array | None = None
    cond: Array | None = None
    step_id: Array | None = None
    step_ok: Array | None = None
    aux_scale: Array | None = None


def check_rollout_batch(batch: RolloutBatch) -> tuple[int, int]:
    """Raise `ValueError` naming the field unless every array has its documented shape; return (B, T)."""
    shape = np.shape(batch.tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [B, T]; got {tuple(shape)}")
    b, t = shape
    fields = TOKEN_FIELDS + tuple(f for f in OPTIONAL_TOKEN_FIELDS if getattr(batch, f) is not None)
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
    for name in ("teacher_topk_idx", "teacher_topk_logp"):
        got = tuple(np.shape(getattr(batch, name))) if getattr(batch, name) is not None else None
        if got is not None and (len(got) != 3 or got[:2] != (b, t)):
            raise ValueError(f"{name} must be [B, T, k] with B={b}, T={t}; got {got}")
    if batch.cond is not None and tuple(np.shape(batch.cond)) != (b,):
        raise ValueError(f"cond must be [B] = ({b},); got {tuple(np.shape(batch.cond))}")
    if batch.step_ok is not None and (np.ndim(batch.step_ok) != 2 or np.shape(batch.step_ok)[0] != b):
        raise ValueError(f"step_ok must be [B, K] with B={b}; got {tuple(np.shape(batch.step_ok))}")
    return b, t


def split_minibatches(batch: RolloutBatch, num_minibatches: int) -> RolloutBatch:
    """Every leaf `[B, ...]` -> `[M, B / M, ...]`; minibatch m holds rows m, m + M, m + 2M, ...

    Strided rows spread each minibatch over the batch-sharded devices and over prompt groups.
    """
    return split_strided(batch, num_minibatches, field="rl.minibatches")


def assemble_token_arrays(prompt_tokens: np.ndarray, prompt_lengths: np.ndarray, response: np.ndarray,
                          response_lengths: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Token arrays of `[left-padded prompt | response]` rows.

    prompt_tokens: [B, P] left-padded; prompt_lengths: [B]; response: [B, N] sampled ids;
    response_lengths: [B] generated tokens kept (eos included). Returns `{tokens, positions,
    segment_ids, loss_mask}` each [B, P + N]; tokens past a response's length become `pad_id`.
    """
    b, p = prompt_tokens.shape
    n = response.shape[1]
    start = (p - np.asarray(prompt_lengths)).astype(np.int32)
    end = (p + np.asarray(response_lengths)).astype(np.int32)
    positions, segment_ids = (np.asarray(x) for x in span_layout(start, end, p + n))  # the one layout
    valid = segment_ids > 0
    tokens = np.concatenate([prompt_tokens, response], axis=1).astype(np.int32)
    tokens = np.where(valid, tokens, pad_id).astype(np.int32)
    positions = np.where(valid, positions, 0).astype(np.int32)
    loss_mask = (valid & (np.arange(p + n)[None, :] >= p)).astype(np.float32)
    return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids.astype(np.int32),
            "loss_mask": loss_mask}


def response_to_token_axis(values: np.ndarray, prompt_width: int, loss_mask: np.ndarray,
                           fill: float = 0.0) -> np.ndarray:
    """`[B, N, ...]` per-response-token values -> `[B, P + N, ...]` aligned with tokens (`fill` off the loss mask).

    Keeps the dtype of `values` (float32 for floats).
    """
    values = np.asarray(values)
    dtype = np.float32 if np.issubdtype(values.dtype, np.floating) else values.dtype
    b = values.shape[0]
    full = np.concatenate([np.full((b, prompt_width, *values.shape[2:]), fill, dtype), values.astype(dtype)], axis=1)
    mask = (np.asarray(loss_mask) > 0).reshape(*loss_mask.shape, *([1] * (values.ndim - 2)))
    return np.where(mask, full, fill).astype(dtype)


def token_rewards(rewards: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """`[B]` outcome rewards -> `[B, T]` with the reward on each row's last response token (GAE input)."""
    mask = np.asarray(loss_mask) > 0
    last = np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), -1)
    out = np.zeros(mask.shape, np.float32)
    rows = np.nonzero(last >= 0)[0]
    out[rows, last[rows]] = np.asarray(rewards, np.float32)[rows]
    return out
