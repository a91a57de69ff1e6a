"""SwiGLU feed-forward block."""

from __future__ import annotations

import jax
from flax import nnx

from jaxrl_llm.models.linear import linear
from jaxrl_llm.models.params import normal_param


class SwiGLU(nnx.Module):
    """`down(silu(gate(x)) * up(x))`; gate/up `[D, F]`, down `[F, D]`.

    `activation` and `project` are the two halves of the call, so analysis code (knowledge
    neurons, `analysis/knowledge_neurons.py`) can read or scale the intermediate `[B, T, F]`.
    """

    def __init__(self, config, *, rngs: nnx.Rngs):
        d, f, pd = config.hidden_size, config.intermediate_size, config.jnp_param_dtype
        self.gate_proj = normal_param(rngs, (d, f), ("embed", "mlp"), pd)
        self.up_proj = normal_param(rngs, (d, f), ("embed", "mlp"), pd)
        self.down_proj = normal_param(rngs, (f, d), ("mlp", "embed"), pd)

    def activation(self, x: jax.Array) -> jax.Array:
        """x `[B, T, D]` -> the intermediate `silu(gate(x)) * up(x)` `[B, T, F]`."""
        return jax.nn.silu(linear(x, self.gate_proj.get_value())) * linear(x, self.up_proj.get_value())

    def project(self, hidden: jax.Array) -> jax.Array:
        """The intermediate `[B, T, F]` -> `down(hidden)` `[B, T, D]`."""
        return linear(hidden, self.down_proj.get_value())

    def __call__(self, x: jax.Array) -> jax.Array:
        """x `[B, T, D]` -> `[B, T, D]`."""
        return self.project(self.activation(x))
