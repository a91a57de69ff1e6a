"""RMSNorm, always computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.linear import weight_as


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """`x [..., D] / rms(x) * (offset + scale [D])`, in float32, returned in `x.dtype`."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf * (offset + weight_as(scale, jnp.float32))).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Learned-scale RMSNorm over the last axis; `scale: [D]` with logical axes `(None,)`.

    With `zero_centered=True` (Qwen3-Next) the stored `scale` starts at 0 and the norm multiplies by
    `1 + scale`: checkpoints store that offset-free weight, and in bfloat16 a weight near 0 keeps
    more precision than one near 1.
    """

    def __init__(self, dim: int, *, eps: float, param_dtype, zero_centered: bool = False):
        self.eps = eps
        self.offset = 1.0 if zero_centered else 0.0
        init = jnp.zeros if zero_centered else jnp.ones
        self.scale = nnx.Param(init((dim,), param_dtype), out_sharding=(None,), eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale.get_value(), self.eps, self.offset)
