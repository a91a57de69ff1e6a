"""Fake quantization with a straight-through estimator, for rollout-aligned training forwards.

QaRL: the learner's forward must see exactly the weights the quantized rollout engine sampled
with, while gradients still reach the full-precision master weights. `fake_quant` returns
`dequantize(quantize(w))` in the forward pass and has the identity Jacobian in the backward pass
(`w + stop_gradient(w_q - w)`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_llm.quant.array import dequantize, quantize

__all__ = ["fake_quant"]


def fake_quant(w: jax.Array, fmt: str = "int4", **quantize_kwargs: Any) -> jax.Array:
    """`[..., in, out]` weight rounded to `fmt` in value, identity in gradient.

    `quantize_kwargs` go to `quantize` (`group_size`, `storage_dtype`). The result has `w`'s shape
    and dtype.
    """
    w = jnp.asarray(w)
    w_q = dequantize(quantize(w, fmt, **quantize_kwargs), dtype=w.dtype)
    return w + jax.lax.stop_gradient(w_q - w)
