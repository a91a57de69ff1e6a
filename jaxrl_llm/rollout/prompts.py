"""Prompt batches: left padding, shape buckets, positions and segment ids.

The one home of the prompt layout: the sampler, greedy evaluation (`train/evaluate.py`), the
serving engine's right-padded prefill and the learner's view of a rollout (`qarl.rollout_layout`)
all take positions and segment ids from `span_layout`.

Prompts are left-padded so that every row's last prompt token sits in the last column: the first
response token of all rows is then predicted by the same column, and decode steps write one
shared cache slot. Shapes are rounded up to buckets so that a stream of batches with slightly
different lengths reuses a few compiled programs instead of compiling one per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `n` (and >= `multiple`)."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive int; got {multiple}")
    return max(multiple, -(-n // multiple) * multiple)


def next_power_of_two(n: int, minimum: int = 16) -> int:
    """The smallest power of two that is >= `max(n, minimum)`."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None, pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token-id lists into `(tokens [B, P] int32, lengths [B] int32)`.

    `P` is `length`, or the longest prompt when None. Every prompt needs at least one token.
    """
    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one prompt; got an empty list")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise ValueError(f"every prompt needs at least one token; prompt {int(lengths.argmin())} is empty")
    width = int(lengths.max()) if length is None else int(length)
    if width < lengths.max():
        raise ValueError(f"length {width} is shorter than the longest prompt ({int(lengths.max())} tokens)")
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = np.asarray(prompt, np.int32)
    return tokens, lengths


def right_pad_bucket(tokens: Sequence[int], max_prefill_length: int, pad_id: int = 0) -> np.ndarray:
    """`tokens` right-padded to `[W]` int32, `W` a power-of-two bucket (>= 16, <= `max_prefill_length`).

    The serving engine prefills one right-padded prompt at a time (`right_padded_layout`).
    """
    if len(tokens) > max_prefill_length:
        raise ValueError(f"prompt has {len(tokens)} tokens; the engine's max_prefill_length is {max_prefill_length}")
    width = min(next_power_of_two(len(tokens)), max_prefill_length)
    out = np.full((width,), pad_id, np.int32)
    out[:len(tokens)] = tokens
    return out


def check_prompt_array(tokens, lengths, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates a left-padded `tokens [B, P]` array and `lengths [B]`; returns them as int32 numpy."""
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt tokens must be a [B, P] integer array; got {tokens.dtype}{tokens.shape}")
    if lengths.shape != tokens.shape[:1] or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be [B] = [{tokens.shape[0]}] integers; got {lengths.dtype}{lengths.shape}")
    if lengths.min() < 1 or lengths.max() > tokens.shape[1]:
        raise ValueError(f"lengths must be in [1, P={tokens.shape[1]}]; got min {lengths.min()} max {lengths.max()}")
    real = np.arange(tokens.shape[1])[None, :] >= tokens.shape[1] - lengths[:, None]
    bad = real & ((tokens < 0) | (tokens >= vocab_size))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"prompt token ids must be in [0, vocab_size={vocab_size}); "
                         f"got {int(tokens[row, col])} at row {row}, column {col}")
    return tokens.astype(np.int32), lengths.astype(np.int32)


def span_layout(start: jax.Array, end: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """`(positions [B, W], segment_ids [B, W])` int32 of rows whose real tokens fill columns `[start, end)`.

    `start`, `end`: `[B]` int. Positions count from 0 at `start` (0 before it, and they keep
    counting after `end`, where nothing attends); segment ids are 1 inside the span, 0 outside.
    Left padding is `start = W - length`, right padding `start = 0, end = length`.
    """
    cols = jnp.arange(width, dtype=jnp.int32)[None, :]
    start, end = start[:, None], end[:, None]
    positions = jnp.maximum(cols - start, 0).astype(jnp.int32)
    segment_ids = ((cols >= start) & (cols < end)).astype(jnp.int32)
    return positions, segment_ids


def prompt_layout(lengths: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """`(positions [B, P], segment_ids [B, P])` int32 of a left-padded prompt batch.

    Real tokens get positions `0 .. len - 1` and segment 1; padding gets position 0 and segment 0.
    """
    return span_layout(width - lengths, jnp.full_like(lengths, width), width)


def right_padded_layout(lengths: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """`(positions [B, P], segment_ids [B, P])` int32 of a right-padded batch (the engine's prefill).

    Positions are the columns `0 .. P - 1`; segment 1 on the first `lengths[b]` columns, 0 after.
    """
    return span_layout(jnp.zeros_like(lengths), lengths, width)
