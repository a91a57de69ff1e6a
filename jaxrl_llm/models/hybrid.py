"""Delta-rule layer types for `Decoder`: Gated DeltaNet, KDA, FG2-GDN and FG2-GDN+ as token mixers.

Importing this module registers `"gated_deltanet"`, `"kda"`, `"fg2_gdn"` and `"fg2_gdn_plus"` with
`models.layers.register_mixer` (the decoder imports it on first use of an unknown layer type), so a
`ModelConfig.layer_types` may mix them with `"attention"` in any pattern
(`config.hybrid_layer_types`, `preset("hybrid-tiny")`).

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

from jaxrl_llm.kernels.delta_rule import delta_rule, delta_rule_step
from jaxrl_llm.models.attention import MixerContext
from jaxrl_llm.models.config import ModelConfig, hybrid_layer_types
from jaxrl_llm.models.delta_layers import (
    FG2GatedDeltaNet,
    GatedDeltaNet,
    KimiDeltaAttention,
    causal_depthwise_conv,
    gated_rms_norm,
)
from jaxrl_llm.models.layers import register_mixer
from jaxrl_llm.models.linear import linear, weight_as

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
    the id changes). With a cache, real tokens are first gathered to the front of each row (stable
    order), padding is made a no-op (decay 0, strength 0) and the outputs are scattered back.
    """

    def __init__(self, config: ModelConfig, layer_type: str, *, rngs: nnx.Rngs):
        self.layer_type = layer_type
        self.delta = DELTA_LAYER_TYPES[layer_type](config, rngs)

    def __call__(self, x: jax.Array, ctx: MixerContext, cache: DeltaCache | None):
        """x `[B, T, D]` -> (`[B, T, D]`, updated `DeltaCache` or None)."""
        if cache is None:
            y, _ = self.delta(x, segment_ids=ctx.segment_ids)
            return y, None
        return _cached_call(self.delta, x, ctx.segment_ids, cache)


def _take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """`x [B, T, ...]` gathered along T by `index [B, T']`."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _mask_padding(x: jax.Array | None, live: jax.Array) -> jax.Array | None:
    """Zeros the `[B, T, ...]` entries of padding tokens (`live [B, T]` False)."""
    if x is None:
        return None
    return jnp.where(live.reshape(live.shape + (1,) * (x.ndim - 2)), x, 0)


def _last_conv_inputs(conv_state, inputs, segments, n_real, last_segment) -> jax.Array:
    """The last W - 1 real conv inputs of each row, zeroed where they precede its last segment.

    conv_state `[B, W - 1, C]` (carried, counted as part of the first segment); inputs `[B, T, C]`
    with real tokens first; segments `[B, T]` (padding filled with the last real id); n_real `[B]`.
    """
    width = conv_state.shape[1]
    stream = jnp.concatenate([conv_state, inputs.astype(conv_state.dtype)], axis=1)
    stream_segments = jnp.concatenate([jnp.repeat(segments[:, :1], width, axis=1), segments], axis=1)
    index = n_real[:, None] + jnp.arange(width, dtype=n_real.dtype)[None, :]
    keep = _take_rows(stream_segments, index) == last_segment[:, None]
    return _take_rows(stream, index) * keep[..., None].astype(stream.dtype)


class _Layout(NamedTuple):
    """Where each row's real tokens go once gathered to the front (stable order).

    order: `[B, T]` source column of each gathered column. live: `[B, T]` gathered column is real.
    segments: `[B, T]` gathered ids, padding filled with the row's last real id (so the kernel sees
    no boundary there). n_real: `[B]`. last: `[B]` last real id (the cached one if none).
    carry: `[B]` the cached state continues (same segment, or no real token at all).
    """

    order: jax.Array
    live: jax.Array
    segments: jax.Array
    n_real: jax.Array
    last: jax.Array
    carry: jax.Array


def _real_first(segment_ids: jax.Array, last_segment: jax.Array) -> _Layout:
    t = segment_ids.shape[1]
    real = segment_ids != 0
    n_real = jnp.sum(real, axis=1, dtype=jnp.int32)
    order = jnp.argsort(jnp.logical_not(real).astype(jnp.int32), axis=1, stable=True)
    segments = _take_rows(segment_ids, order)
    live = jnp.arange(t, dtype=jnp.int32)[None, :] < n_real[:, None]
    has_real = n_real > 0
    last = jnp.where(has_real, _take_rows(segments, jnp.maximum(n_real - 1, 0)[:, None])[:, 0], last_segment)
    segments = jnp.where(live, segments, last[:, None])
    carry = (segments[:, 0] == last_segment) | ~has_real
    return _Layout(order, live, segments, n_real, last, carry)


def _recurrence(m, q, k, v, g, beta, beta_v, state, segments):
    """Delta rule from `state`: the one-token step for T = 1, else the configured kernel."""
    if q.shape[1] == 1:
        o, state = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state=state,
                                   beta_v=None if beta_v is None else beta_v[:, 0], use_qk_l2norm_in_kernel=True)
        return o[:, None], state
    return delta_rule(q, k, v, g, beta, beta_v=beta_v, initial_state=state, output_final_state=True,
                      segment_ids=segments, use_qk_l2norm_in_kernel=True, impl=m.impl, chunk_size=m.chunk_size)


def _cached_call(m, x: jax.Array, segment_ids: jax.Array, cache: DeltaCache):
    """The wrapped layer's pipeline (as in `delta_layers._DeltaMixer.__call__`) on a carried
    `DeltaCache`, skipping padding tokens. x `[B, T, D]` -> (`[B, T, D]`, new `DeltaCache`)."""
    b, t, _ = x.shape
    layout = _real_first(segment_ids, cache.last_segment)
    x = _take_rows(x, layout.order).astype(m.dtype)
    conv_state = cache.conv * layout.carry[:, None, None].astype(cache.conv.dtype)
    rec_state = cache.recurrent * layout.carry[:, None, None, None].astype(cache.recurrent.dtype)

    mixed, extras = m._project(x)
    # weight_as: a quantized rollout may hold the 2-D conv taps as a quantized leaf.
    conv_weight = weight_as(m.conv1d.get_value(), jnp.float32)
    conv_out, _ = causal_depthwise_conv(mixed, conv_weight, conv_state, layout.segments)
    new_conv = _last_conv_inputs(conv_state, mixed, layout.segments, layout.n_real, layout.last)
    conv_out = jax.nn.silu(conv_out.astype(jnp.float32)).astype(m.dtype)
    q, k, v = jnp.split(conv_out, [m.key_dim, 2 * m.key_dim], axis=-1)
    q = q.reshape(b, t, m.num_k_heads, m.head_k_dim)
    k = k.reshape(b, t, m.num_k_heads, m.head_k_dim)
    v = v.reshape(b, t, m.num_v_heads, m.head_v_dim)
    g, beta, beta_v, gate = m._gates(x, extras)
    # Decay 0 and strength 0 leave the state exactly as it was: padding is a no-op.
    g, beta, beta_v = (_mask_padding(a, layout.live) for a in (g, beta, beta_v))
    o, new_rec = _recurrence(m, q, k, v, g, beta, beta_v, rec_state, layout.segments)
    o = gated_rms_norm(o, gate, m.norm.get_value(), m.norm_eps, m.gate_activation)
    y = linear(o.reshape(b, t, m.value_dim), m.out_proj.get_value())
    y = _take_rows(y, jnp.argsort(layout.order, axis=1))
    return y, DeltaCache(conv=new_conv, recurrent=new_rec.astype(jnp.float32), last_segment=layout.last)


def _register() -> None:
    for layer_type in DELTA_LAYER_TYPES:
        register_mixer(layer_type,
                       lambda config, rngs, layer_type=layer_type: DeltaMixer(config, layer_type, rngs=rngs),
                       init_delta_cache)


_register()
