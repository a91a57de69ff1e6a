"""Sharding constraints on activations, by logical axis names, active only inside `activation_mesh`.

Parameters carry their shardings; activations get theirs from XLA's propagation, which on a mesh
with both FSDP and tensor axes can pick a layout for the residual stream (e.g. `[B, T, D]` split
over `fsdp` along D, copied from the weights) that the next op must undo by replicating the whole
tensor ("Involuntary full rematerialization"). Pinning the residual stream to the batch layout at
every layer boundary keeps both the forward activations and their cotangents (a sharding
constraint is its own transpose) batch-sharded.

Model code calls `constrain(x, names)` unconditionally; it is the identity unless a step traces
the model inside `with activation_mesh(mesh):`, so single-device use and tests need no mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh

from jaxrl_llm.parallel.rules import MeshAxes, logical_to_sharding

# Logical names of the residual stream [B, T, D]: rows over the batch axes, the rest whole.
RESIDUAL = ("batch", None, None)
# A constraint is a layout hint, so these dimensions run whole where their mesh axes do not divide
# them rather than failing: a batch of any size (a 3-row eval or decode step on 4 batch shards) and
# the rows of a quantized table's scales (V / group_size, fewer than the tensor shards).
MAY_REPLICATE = ("batch", "vocab")

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping[str, MeshAxes] | None] | None] = (
    contextvars.ContextVar("activation_mesh", default=None))


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None, rules: Mapping[str, MeshAxes] | None = None) -> Iterator[None]:
    """Within this block (at trace time), `constrain` pins activations on `mesh` by `rules`.

    `mesh=None` or a single-device mesh leaves `constrain` the identity.
    """
    active = None if mesh is None or mesh.size == 1 else (mesh, rules)
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh of the innermost `activation_mesh` block, or None."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def target_platform() -> str:
    """The platform this computation is traced for: the active activation mesh's devices (an AOT
    compile for a TPU or GPU topology), else the default backend."""
    mesh = current_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint(x, names -> mesh axes)` inside `activation_mesh`; `x` otherwise.

    A `MAY_REPLICATE` dimension its mesh axes do not divide is left whole; any other rule that
    cannot apply raises (see `rules.logical_to_spec`).
    """
    active = _ACTIVE.get()
    if active is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} logical names {tuple(names)} for an array of shape {x.shape}")
    mesh, rules = active
    sharding = logical_to_sharding(names, mesh, shape=x.shape, rules=rules, allow_replicate=MAY_REPLICATE)
    return jax.lax.with_sharding_constraint(x, sharding)
