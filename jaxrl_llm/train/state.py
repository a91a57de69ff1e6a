"""`TrainState`: the one pytree a jitted training step maps to a new one.

Fields: `params` (the model's `nnx.Param` state), `opt_state` (optax), `step` (int32 scalar),
`rng` (uint32[2] PRNG key data) and `extras` (a dict of arrays for statistics that must persist
across steps, e.g. gradient-norm gate statistics). Every leaf carries a `NamedSharding` on the
run's mesh: parameters and their optimizer moments by the logical-axis rules, everything else
replicated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from jaxrl_llm.models.lora import split_trainable
from jaxrl_llm.parallel.rules import replicated


@struct.dataclass
class TrainState:
    """Parameters, optimizer state, step counter, RNG key data and per-run extras."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    extras: dict[str, Any]


def train_state_shardings(
    params_shardings: Any,
    optimizer: optax.GradientTransformation,
    abstract_params: Any,
    mesh: Mesh,
    extras: Mapping[str, Any] | None = None,
) -> TrainState:
    """A `TrainState` of `NamedSharding`s: optimizer moments follow their parameter's sharding.

    The optimizer state covers the trainable view (`models.lora.split_trainable`: all parameters, or
    only the LoRA adapters when the params hold `LoraWeight` leaves).
    """
    abstract_opt = jax.eval_shape(optimizer.init, split_trainable(abstract_params)[0])
    rep = replicated(mesh)
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt,
        split_trainable(params_shardings)[0],
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(
        params=params_shardings,
        opt_state=opt_shardings,
        step=rep,
        rng=rep,
        extras={k: rep for k in (extras or {})},
    )


def create_train_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    params_shardings: Any,
    *,
    seed: int,
    extras: Mapping[str, Any] | None = None,
) -> TrainState:
    """Build the initial `TrainState` (optimizer state created sharded inside `jit`)."""
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shardings = train_state_shardings(params_shardings, optimizer, abstract_params, mesh, extras)
    extras = {k: jnp.asarray(v) for k, v in (extras or {}).items()}

    def init(params, extras):
        return TrainState(
            params=params,
            opt_state=optimizer.init(split_trainable(params)[0]),
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.key_data(jax.random.key(seed)),
            extras=extras,
        )

    return jax.jit(init, out_shardings=shardings)(params, extras)


def abstract_train_state(state: TrainState) -> TrainState:
    """`ShapeDtypeStruct`s (with shardings) of `state`, the restore target for a checkpoint."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@jax.jit
def _all_finite_leaves(leaves: list[Any]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree: Any) -> bool:
    """True when every floating-point leaf of `tree` is finite.

    One jitted reduction over all leaves: every process runs the same single program (per-leaf eager
    reductions on arrays sharded across processes each start their own collective and can deadlock).
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return bool(_all_finite_leaves(leaves)) if leaves else True
