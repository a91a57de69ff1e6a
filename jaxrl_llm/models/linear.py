"""The one place where weights meet activations.

Every weight matmul in the decoder goes through `linear` (and every table lookup through
`embedding_lookup`), so a quantized rollout path can store a different leaf type in a parameter
without touching the layers: a weight leaf is either a plain array, a `jaxrl_llm.quant.QuantArray`
(multiplied by `qmatmul`), a `jaxrl_llm.models.lora.LoraWeight` (base plus low-rank adapter,
multiplied in factored form by `lora_matmul`), or any object with a `dequantize(dtype) -> array` method.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_llm.models.lora import LoraWeight, lora_matmul
from jaxrl_llm.parallel.activations import target_platform
from jaxrl_llm.quant import QuantArray, dequantize, qmatmul


def weight_as(w: Any, dtype) -> jax.Array:
    """`w` as an array of `dtype`: dequantized if it is a quantized leaf, else cast."""
    if isinstance(w, QuantArray):
        return dequantize(w, dtype)
    if hasattr(w, "dequantize"):
        return w.dequantize(dtype)
    return jnp.asarray(w).astype(dtype)


def linear(x: jax.Array, w: Any, *, out_dtype=None) -> jax.Array:
    """`x [..., I] @ w [I, O] -> [..., O]`.

    The product accumulates in float32 and is cast to `out_dtype` (default: `x.dtype`); the weight is
    brought to `x.dtype` first, so `x.dtype` is the compute dtype. A `QuantArray` weight goes
    through `qmatmul` (per-channel codes enter the matmul directly); a `LoraWeight` through
    `lora_matmul` (`x @ base + scale * (x @ a) @ b`: no merged weight is formed).
    """
    if isinstance(w, LoraWeight):
        return lora_matmul(x, w, out_dtype)
    if isinstance(w, QuantArray):
        return qmatmul(x, w).astype(out_dtype or x.dtype)
    w = weight_as(w, x.dtype)
    if w.ndim != 2 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"linear: w must be [{x.shape[-1]}, O] for x {x.shape}; got {w.shape}")
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    if target_platform() == "cpu":
        return _dense_cpu(x, w, out_dtype)
    return _dense(x, w, out_dtype)


def _dense(x: jax.Array, w: jax.Array, out_dtype) -> jax.Array:
    """`x [..., I] @ w [I, O]`, accumulated in float32, as `out_dtype`."""
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32).astype(out_dtype)


# XLA:CPU runs a dot through its fast (YNNPACK) path only when the lhs contracts its minor dimension.
# The autodiff weight gradient `x^T g` contracts the token dimension, the major one of both operands,
# so XLA transposes `g` (the larger operand) and runs a slow generic dot: measured on the 4 x 256
# model, the decoder backward took 6.5x its forward. This VJP transposes `x` itself, behind an
# optimization barrier so the transpose is not folded back into the dot. Same values as autodiff.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x: jax.Array, w: jax.Array, out_dtype) -> jax.Array:
    return _dense(x, w, out_dtype)


def _dense_cpu_fwd(x, w, out_dtype):
    return _dense(x, w, out_dtype), (x, w)


def _dense_cpu_bwd(out_dtype, residuals, g):
    x, w = residuals
    # Autodiff keeps a float32 cotangent of a bf16 matmul (the lm_head) in float32; so does this.
    dtype = jnp.promote_types(g.dtype, x.dtype)
    dx = jnp.einsum("...o,io->...i", g.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    x_t = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T.astype(dtype))
    dw = jax.lax.dot_general(x_t, g.reshape(-1, g.shape[-1]).astype(dtype), (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


def embedding_lookup(table: Any, tokens: jax.Array, dtype) -> jax.Array:
    """Rows of `table [V, D]` at `tokens [B, T]` -> `[B, T, D]` in `dtype`."""
    if hasattr(table, "dequantize"):
        return jnp.take(table.dequantize(dtype), tokens, axis=0)
    # Gather before casting: only B*T rows change dtype, not the whole table.
    return jnp.take(table, tokens, axis=0).astype(dtype)
