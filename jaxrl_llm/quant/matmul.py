"""Matmul and einsum that accept either a plain weight or a `QuantArray`.

Model code calls `qmatmul(x, w)` and never branches on precision. For per-channel formats
(`G = 1`: int8, fp8) the codes go into the matmul as they are (cast to the compute dtype, which
holds them exactly) and the scale is applied to the `[..., out]` result, so no dequantized weight
is formed. Grouped formats (int4, `G > 1`) dequantize in the compute dtype and then multiply: a
per-group product would need a `[..., G, out]` intermediate, larger than the weight itself for
long prefills.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.quant.array import QuantArray, dequantize

__all__ = ["qmatmul", "qeinsum"]


def _out_dtype(x: jax.Array, w) -> jnp.dtype:
    return jnp.result_type(x.dtype, w.dtype)


def qmatmul(x: jax.Array, w: jax.Array | QuantArray) -> jax.Array:
    """`x @ w` for `x: [..., in]` and `w: [in, out]` (plain or quantized) -> `[..., out]`.

    The product accumulates in float32 and is returned in `result_type(x, w's original dtype)`.
    """
    x = jnp.asarray(x)
    if len(w.shape) != 2:
        raise ValueError(f"w must be [in, out]; got {tuple(w.shape)}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x must be [..., in] with in = {w.shape[0]}; got {x.shape}")
    out_dtype = _out_dtype(x, w)
    if not isinstance(w, QuantArray):
        return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(out_dtype)
    compute_dtype = jnp.result_type(x.dtype, jnp.bfloat16)  # bf16 holds every int8/int4/e4m3 code
    if w.num_groups == 1:
        codes = w.values[: w.in_features].astype(compute_dtype)
        y = jnp.matmul(x.astype(compute_dtype), codes, preferred_element_type=jnp.float32)
        return (y * w.scale[0]).astype(out_dtype)
    w_dense = dequantize(w, dtype=compute_dtype)
    y = jnp.matmul(x.astype(compute_dtype), w_dense, preferred_element_type=jnp.float32)
    return y.astype(out_dtype)


def qeinsum(subscripts: str, x: jax.Array, w: jax.Array | QuantArray) -> jax.Array:
    """`jnp.einsum(subscripts, x, w)` where `w` may be a `QuantArray` (dequantized in compute).

    Accumulates in float32; returns `result_type(x, w's original dtype)`.
    """
    x = jnp.asarray(x)
    out_dtype = _out_dtype(x, w)
    if isinstance(w, QuantArray):
        w = dequantize(w, dtype=jnp.result_type(x.dtype, jnp.bfloat16))
    return jnp.einsum(subscripts, x, w, preferred_element_type=jnp.float32).astype(out_dtype)
