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
    """Attention-layer cache: `k, v: [B, KVH, S, Dh]`.

    Head-major, so a decode step's `q k^T` and `p v` read the cache as plain batched matmuls over
    (B, KVH); the token-major `[B, S, KVH, Dh]` layout made XLA:CPU copy the whole cache into this
    layout twice per layer per step.
    """

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
    """Zeros `[B, KVH, S, Dh]` for k and v."""
    shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def write_slots(buffer: jax.Array, new: jax.Array, index: jax.Array, *, axis: int = 1) -> jax.Array:
    """Writes `new` into `buffer` at slots `[index, index + T)` of `axis` (`buffer [B, S, ...]` and
    `new [B, T, ...]` for the default axis 1; `[B, KVH, S, Dh]` and `[B, KVH, T, Dh]` with axis 2)."""
    zero = jnp.zeros((), jnp.int32)
    start = tuple(jnp.asarray(index, jnp.int32) if d == axis else zero for d in range(buffer.ndim))
    return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)
