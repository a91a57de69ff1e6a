"""The one place where weights meet activations.

Every weight matmul in the decoder goes through `linear` (and every table lookup through
`embedding_lookup`), so a quantized rollout path can store a different leaf type in a parameter
without touching the layers: a weight leaf is either a plain array, a `jaxrl_llm.quant.QuantArray`
(multiplied by `qmatmul`), a `jaxrl_llm.models.lora.LoraWeight` (base plus low-rank adapter,
multiplied in factored form by `lora_matmul`), or any object with a `dequantize(dtype) -> array` method.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_llm.models.lora import LoraWeight, lora_matmul
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
    y = jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def embedding_lookup(table: Any, tokens: jax.Array, dtype) -> jax.Array:
    """Rows of `table [V, D]` at `tokens [B, T]` -> `[B, T, D]` in `dtype`."""
    if hasattr(table, "dequantize"):
        return jnp.take(table.dequantize(dtype), tokens, axis=0)
    # Gather before casting: only B*T rows change dtype, not the whole table.
    return jnp.take(table, tokens, axis=0).astype(dtype)
