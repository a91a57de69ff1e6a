"""Decode-time cache: per-layer state plus the slot bookkeeping shared by all layers.

Slots `[0, S)` are filled left to right: a prefill of `[B, T]` writes slots `[index, index + T)`,
each decode step one more. `segment_ids[b, s]` is the segment of the token held in slot `s` (0:
empty or padding, never attended), so masking is exact for left-padded ragged batches and packed
prompts. `index` is a scalar int32 array, so the cache keeps fixed shapes under `jax.jit` and
`lax.while_loop`. Writing past `S` is not checked on device: callers size `max_len` for prompt
plus generation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """Attention-layer cache: `k, v: [B, S, KVH, Dh]`."""

    k: jax.Array
    v: jax.Array


class DecoderCache(NamedTuple):
    """Whole-model cache.

    layers: one entry per layer (a `KVCache` for attention layers; a layer type's own state otherwise).
    segment_ids: `[B, S]` int32, segment of the token in each slot (0 = empty/padding).
    index: `[]` int32, the next slot to write.
    """

    layers: tuple[Any, ...]
    segment_ids: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]

    @property
    def batch_size(self) -> int:
        return self.segment_ids.shape[0]


def init_kv_cache(config, batch_size: int, max_len: int, dtype) -> KVCache:
    """Zeros `[B, S, KVH, Dh]` for k and v."""
    shape = (batch_size, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def write_slots(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """Writes `new [B, T, ...]` into `buffer [B, S, ...]` at slots `[index, index + T)`."""
    start = (jnp.zeros((), jnp.int32), jnp.asarray(index, jnp.int32)) + (jnp.zeros((), jnp.int32),) * (buffer.ndim - 2)
    return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)
