"""Parameter constructors that attach logical axis names.

Each parameter records its logical axes (`"vocab"`, `"embed"`, `"heads"`, `"kv_heads"`, `"mlp"`,
or None) as the nnx `out_sharding` metadata; `jaxrl_llm.parallel` maps them to mesh axes. Eager
sharding is off so that a model can be built with no mesh in scope; read the names back with
`nnx.get_partition_spec(nnx.state(model))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """A `N(0, 0.02^2)` parameter of `shape` with logical `axes`."""
    value = INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=axes, eager_sharding=False)


def constant_param(value: float, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter of `shape` filled with `value` (norm scales, biases)."""
    return nnx.Param(jnp.full(shape, value, dtype), out_sharding=axes, eager_sharding=False)
