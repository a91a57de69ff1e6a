"""Delta-rule layer types for `Decoder`: Gated DeltaNet, KDA, FG2-GDN and FG2-GDN+ as token mixers.

`models.layers` registers `"gated_deltanet"`, `"kda"`, `"fg2_gdn"` and `"fg2_gdn_plus"` (the keys of
`DELTA_LAYER_TYPES`) as `DeltaMixer`s, so a `ModelConfig.layer_types` may mix them with `"attention"`
in any pattern (`config.hybrid_layer_types`, `preset("hybrid-tiny")`).

Each mixer wraps a `models.delta_layers` module (the `delta` attribute) and keeps a fixed-shape
`DeltaCache` per layer, so prefill and one-token decode run through the same `Decoder` call and
cache as attention layers do. With a cache, padding tokens (segment id 0) are skipped: they change
neither the conv window nor the recurrent state, wherever they sit (left-padded prompts,
right-padded prompts, finished rows that keep decoding), and the state carries over between calls
while the first real token continues the segment of the last real token seen (else it restarts
from zero, as for a new packed sequence).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.attention import MixerContext
from jaxrl_llm.models.config import ModelConfig, hybrid_layer_types
from jaxrl_llm.models.delta_layers import FG2GatedDeltaNet, GatedDeltaNet, KimiDeltaAttention

__all__ = ["DELTA_LAYER_TYPES", "DeltaCache", "DeltaMixer", "hybrid_layer_types", "init_delta_cache"]


class DeltaCache(NamedTuple):
    """Per-layer decode state of a delta-rule mixer (fixed shapes).

    conv: `[B, W - 1, C]` the last W - 1 conv inputs (`C = 2 * Hk * K + HV * V`, the q|k|v channels).
    recurrent: `[B, HV, K, V]` float32 delta-rule state.
    last_segment: `[B]` int32 segment id of the last real token written (0 = none yet).
    """

    conv: jax.Array
    recurrent: jax.Array
    last_segment: jax.Array


def _delta_kwargs(config: ModelConfig) -> dict:
    return dict(conv_kernel_size=config.linear_conv_kernel_dim, norm_eps=config.rms_norm_eps,
                impl=config.delta_impl, chunk_size=config.delta_chunk_size, dtype=config.jnp_dtype,
                param_dtype=config.jnp_param_dtype)


def _gated_deltanet(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    c = config
    return GatedDeltaNet(c.hidden_size, c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                         c.linear_value_head_dim, rngs=rngs, **_delta_kwargs(c))


def _kda(config: ModelConfig, rngs: nnx.Rngs, cls=KimiDeltaAttention, **extra) -> nnx.Module:
    c = config
    return cls(c.hidden_size, c.linear_num_key_heads, c.linear_key_head_dim, num_v_heads=c.linear_num_value_heads,
               head_v_dim=c.linear_value_head_dim, rngs=rngs, **extra, **_delta_kwargs(c))


def _fg2_gdn(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if config.linear_key_head_dim != config.linear_value_head_dim:
        raise ValueError(
            f"layer type 'fg2_gdn' scales keys and values by one beta and needs "
            f"ModelConfig.linear_key_head_dim == linear_value_head_dim; got {config.linear_key_head_dim} != "
            f"{config.linear_value_head_dim} (use 'fg2_gdn_plus')")
    return _kda(config, rngs, FG2GatedDeltaNet, decoupled=False)


def _fg2_gdn_plus(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    return _kda(config, rngs, FG2GatedDeltaNet, decoupled=True)


DELTA_LAYER_TYPES = {"gated_deltanet": _gated_deltanet, "kda": _kda, "fg2_gdn": _fg2_gdn,
                     "fg2_gdn_plus": _fg2_gdn_plus}


def init_delta_cache(config: ModelConfig, batch_size: int, max_len: int, dtype) -> DeltaCache:
    """Zero state for `batch_size` rows; `max_len` is unused (the state does not grow)."""
    del max_len
    c = config
    key_dim = c.linear_num_key_heads * c.linear_key_head_dim
    value_dim = c.linear_num_value_heads * c.linear_value_head_dim
    conv_channels = 2 * key_dim + value_dim  # the q | k | v channels
    return DeltaCache(
        conv=jnp.zeros((batch_size, c.linear_conv_kernel_dim - 1, conv_channels), dtype),
        recurrent=jnp.zeros((batch_size, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim),
                            jnp.float32),
        last_segment=jnp.zeros((batch_size,), jnp.int32))


class DeltaMixer(nnx.Module):
    """A delta-rule layer as a decoder mixer: `mixer(x [B, T, D], ctx, DeltaCache | None)`.

    Without a cache the wrapped layer runs on `ctx.segment_ids` (state and conv taps reset where
    the id changes). With a cache, the layer gets the cached state (zeroed where the row's first
    real token starts a new segment) and a padding mask (segment id 0), so padding never touches it.
    """

    def __init__(self, config: ModelConfig, layer_type: str, *, rngs: nnx.Rngs):
        self.layer_type = layer_type
        self.delta = DELTA_LAYER_TYPES[layer_type](config, rngs)

    def __call__(self, x: jax.Array, ctx: MixerContext, cache: DeltaCache | None):
        """x `[B, T, D]` -> (`[B, T, D]`, updated `DeltaCache` or None)."""
        if cache is None:
            y, _ = self.delta(x, segment_ids=ctx.segment_ids)
            return y, None
        real = ctx.segment_ids != 0
        first, last = _first_and_last_real(ctx.segment_ids, cache.last_segment)
        # The carried state continues only into the same segment (an all-padding row keeps it).
        carry = first == cache.last_segment
        conv = cache.conv * carry[:, None, None].astype(cache.conv.dtype)
        recurrent = cache.recurrent * carry[:, None, None, None].astype(cache.recurrent.dtype)
        y, (new_conv, new_rec) = self.delta(x, segment_ids=ctx.segment_ids, state=(conv, recurrent),
                                            padding_mask=real)
        return y, DeltaCache(conv=new_conv.astype(cache.conv.dtype), recurrent=new_rec.astype(jnp.float32),
                             last_segment=last)


def _first_and_last_real(segment_ids: jax.Array, last_segment: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[B]` ids of each row's first and last real token (segment id != 0); `last_segment [B]` where none."""
    real = segment_ids != 0
    t = segment_ids.shape[1]
    first_col = jnp.argmax(real, axis=1)
    last_col = t - 1 - jnp.argmax(real[:, ::-1], axis=1)
    pick = lambda col: jnp.take_along_axis(segment_ids, col[:, None], axis=1)[:, 0]  # noqa: E731
    has_real = jnp.any(real, axis=1)
    return (jnp.where(has_real, pick(first_col), last_segment),
            jnp.where(has_real, pick(last_col), last_segment))

