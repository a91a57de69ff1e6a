"""RMSNorm, always computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.linear import weight_as


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """`x [..., D] / rms(x) * scale [D]`, in float32, returned in `x.dtype`."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf * weight_as(scale, jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Learned-scale RMSNorm over the last axis; `scale: [D]` with logical axes `(None,)`."""

    def __init__(self, dim: int, *, eps: float, param_dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(None,), eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale.get_value(), self.eps)
