"""Grouped-query softmax attention with RoPE, optional q/k/v biases (Qwen2), q/k RMSNorm (Qwen3) and a
sigmoid output gate (Qwen3-Next). The kernels (reference, blockwise, cuDNN, splash) live in
`models.attention_kernels`; `ModelConfig.attention_impl` picks one per call."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.attention_kernels import (
    attend,
    attend_heads_major,
    attention_mask,
    blockwise_attend,
    cudnn_attend,
    resolve_attention_impl,
    splash_attend,
)
from jaxrl_llm.models.cache import KVCache, write_slots
from jaxrl_llm.models.linear import linear, weight_as
from jaxrl_llm.models.norm import RMSNorm
from jaxrl_llm.models.params import constant_param, normal_param
from jaxrl_llm.models.rope import apply_rope
from jaxrl_llm.parallel.activations import current_mesh, target_platform

__all__ = ["Attention", "MixerContext", "attend", "attend_context", "attend_heads_major", "attention_mask"]


class MixerContext(NamedTuple):
    """Per-forward inputs shared by every layer's mixer.

    positions: `[B, T]` int32 RoPE positions of the queries.
    segment_ids: `[B, T]` int32 query segments (0 = padding).
    q_slots: `[T]` int32 slot of each query (its index, or the cache slot it is written to).
    k_segment_ids: `[B, S]` int32 segments of the key slots (S = T without a cache, else cache length).
    k_slots: `[S]` int32 slot of each key.
    cos, sin: `[B, T, R]` float32 RoPE tables (R = rotary dims, `Dh` unless partial rotary).
    cache_index: `[]` int32 first slot written by this call, or None without a cache.

    `mask` (`[B, T, S]` bool) is built only when read: the blockwise, cuDNN and splash kernels take the
    segment ids and slots instead.
    """

    positions: jax.Array
    segment_ids: jax.Array
    q_slots: jax.Array
    k_segment_ids: jax.Array
    k_slots: jax.Array
    cos: jax.Array
    sin: jax.Array
    cache_index: jax.Array | None

    @property
    def mask(self) -> jax.Array:
        """`[B, T, S]` bool: query t may attend key slot s (`attention_mask`)."""
        return attention_mask(self.segment_ids, self.q_slots, self.k_segment_ids, self.k_slots)


def attend_context(q: jax.Array, k: jax.Array, v: jax.Array, ctx: MixerContext, *, impl: str = "auto",
                   block: int = 512, heads_major: bool = False) -> jax.Array:
    """Attention under `ctx`'s mask by the kernel `impl` resolves to (`resolve_attention_impl`).

    q `[B, T, H, Dh]`, k/v `[B, S, KVH, Dh]` (`[B, KVH, S, Dh]` with `heads_major`, the cache
    layout) -> `[B, T, H, Dh]`; `block` is the blockwise / splash block size.
    """
    s = k.shape[2] if heads_major else k.shape[1]
    chosen = resolve_attention_impl(impl, platform=target_platform(), dtype=q.dtype, head_dim=q.shape[-1],
                                    t=q.shape[1], s=s, cached=ctx.cache_index is not None)
    if chosen == "reference":
        return (attend_heads_major if heads_major else attend)(q, k, v, ctx.mask)
    if heads_major:  # the other kernels take token-major keys
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    if chosen == "blockwise":
        return blockwise_attend(q, k, v, ctx.segment_ids, ctx.q_slots, ctx.k_segment_ids, ctx.k_slots,
                                block_q=block, block_k=block)
    if chosen == "cudnn":
        return cudnn_attend(q, k, v, ctx.segment_ids, ctx.q_slots, ctx.k_segment_ids, ctx.k_slots)
    return splash_attend(q, k, v, ctx.segment_ids, block=block, mesh=current_mesh())


class Attention(nnx.Module):
    """GQA self-attention. Weights `[in, out]`: q `[D, H*Dh]`, k/v `[D, KVH*Dh]`, o `[H*Dh, D]`.

    With `config.attention_output_gate` (Qwen3-Next) q is `[D, H*2*Dh]`: per head, `Dh` query
    channels then `Dh` gate channels (the Hugging Face layout), and the attention output is
    multiplied by `sigmoid(gate)` before `o`.
    """

    def __init__(self, config, *, rngs: nnx.Rngs):
        c = config
        pd = c.jnp_param_dtype
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.output_gate = c.attention_output_gate
        self.attention_impl, self.attention_block = c.attention_impl, c.attention_block
        q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q_width = 2 * q_out if self.output_gate else q_out
        self.q_proj = normal_param(rngs, (c.hidden_size, q_width), ("embed", "heads"), pd)
        self.k_proj = normal_param(rngs, (c.hidden_size, kv_out), ("embed", "kv_heads"), pd)
        self.v_proj = normal_param(rngs, (c.hidden_size, kv_out), ("embed", "kv_heads"), pd)
        self.o_proj = normal_param(rngs, (q_out, c.hidden_size), ("heads", "embed"), pd)
        self.use_bias = c.attention_bias
        if c.attention_bias:
            self.q_bias = constant_param(0.0, (q_width,), ("heads",), pd)
            self.k_bias = constant_param(0.0, (kv_out,), ("kv_heads",), pd)
            self.v_bias = constant_param(0.0, (kv_out,), ("kv_heads",), pd)
        self.use_qk_norm = c.qk_norm
        if c.qk_norm:
            norm = dict(eps=c.rms_norm_eps, param_dtype=pd, zero_centered=c.norm_zero_centered)
            self.q_norm = RMSNorm(c.head_dim, **norm)
            self.k_norm = RMSNorm(c.head_dim, **norm)

    def _project(self, x, name: str, heads: int, width: int) -> jax.Array:
        y = linear(x, getattr(self, f"{name}_proj").get_value())
        if self.use_bias:
            y = y + weight_as(getattr(self, f"{name}_bias").get_value(), y.dtype)
        return y.reshape(*x.shape[:2], heads, width)

    def __call__(self, x: jax.Array, ctx: MixerContext, cache: KVCache | None):
        """x `[B, T, D]` -> (`[B, T, D]`, updated `KVCache` or None)."""
        if self.output_gate:
            q, gate = jnp.split(self._project(x, "q", self.num_heads, 2 * self.head_dim), 2, axis=-1)
        else:
            q, gate = self._project(x, "q", self.num_heads, self.head_dim), None
        k = self._project(x, "k", self.num_kv_heads, self.head_dim)
        v = self._project(x, "v", self.num_kv_heads, self.head_dim)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, ctx.cos, ctx.sin)
        k = apply_rope(k, ctx.cos, ctx.sin)
        if cache is not None:
            # The cache is head-major (`KVCache`): only this call's T new keys change layout.
            k, v = (write_slots(buf, jnp.swapaxes(new, 1, 2), ctx.cache_index, axis=2)
                    for buf, new in ((cache.k, k), (cache.v, v)))
            cache = KVCache(k, v)
        out = attend_context(q, k, v, ctx, impl=self.attention_impl, block=self.attention_block,
                             heads_major=cache is not None)
        if gate is not None:
            out = out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)
        out = out.reshape(*x.shape[:2], self.num_heads * self.head_dim)
        return linear(out, self.o_proj.get_value()), cache
