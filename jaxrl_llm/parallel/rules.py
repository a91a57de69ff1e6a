"""The one table mapping logical axis names to mesh axes, and its translation to shardings.

Parameters and activations name their dimensions logically (`embed`, `heads`, `mlp`, `vocab`,
`batch`, ...); only this table knows how those names land on the mesh. Changing a parallelism
strategy means editing `DEFAULT_RULES` (or passing another table), nothing else.

A rule that cannot apply fails loudly, naming the dimension, its logical name and size, and the
mesh axes with their sizes: two dimensions mapped to the same mesh axis, or a dimension that its
mesh axes do not divide. Mesh axes of size 1 (or absent from the mesh) are ignored, so every rule
applies on one device. A caller that means to replicate a dimension its axes do not divide names
that logical axis in `allow_replicate`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

# Logical axis -> mesh axis (or axes, major to minor). Names not listed are replicated.
DEFAULT_RULES: Mapping[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
}


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _describe(axes: tuple[str, ...], mesh: Mesh | None) -> str:
    """`mesh axes ('tensor',) of size 8`, or `... of size 8 (data=2, fsdp=4)` for several."""
    if mesh is None:
        return f"mesh axes {axes}"
    size = math.prod(mesh.shape[a] for a in axes)
    parts = f" ({', '.join(f'{a}={mesh.shape[a]}' for a in axes)})" if len(axes) > 1 else ""
    return f"mesh axes {axes} of size {size}{parts}"


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Mapping[str, MeshAxes] | None = None,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    allow_replicate: Collection[str] = (),
) -> PartitionSpec:
    """Translate logical axis `names` (one per dimension) into a `PartitionSpec` of mesh axes.

    Args:
      names: one logical name (or None: replicated) per dimension; None means all replicated.
      rules: logical name -> mesh axis or axes (default `DEFAULT_RULES`); unlisted names replicate.
      shape: the array's shape; with `mesh`, every sharded dimension must be divisible by the
        product of its mesh axis sizes.
      mesh: drops mesh axes it lacks or that have size 1, and sizes the error messages.
      allow_replicate: logical names whose dimension is replicated, instead of failing, when its
        mesh axes do not divide it.
    Raises:
      ValueError: a mesh axis is used by two dimensions, or a dimension is not divisible by its
        mesh axes (outside `allow_replicate`); the message names both.
    """
    rules = DEFAULT_RULES if rules is None else rules
    if names is None:
        names = () if shape is None else (None,) * len(shape)
    names = tuple(names)
    if shape is not None and len(shape) != len(names):
        raise ValueError(
            f"logical axis names {names} must have one entry per dimension of shape {tuple(shape)}"
        )
    if shape is not None and mesh is None:
        raise ValueError("logical_to_spec: divisibility by shape needs the mesh")
    owner: dict[str, int] = {}  # mesh axis -> the dimension that uses it
    entries: list[MeshAxes] = []
    for dim, name in enumerate(names):
        axes = _as_tuple(rules.get(name)) if name is not None else ()
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
        taken = [a for a in axes if a in owner]
        if taken:
            other = owner[taken[0]]
            raise ValueError(
                f"dimension {dim} (logical {name!r}) maps to {_describe(axes, mesh)}, but dimension "
                f"{other} (logical {names[other]!r}) already uses {taken}; logical names {names}")
        if axes and shape is not None:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[dim] % size:
                if name not in allow_replicate:
                    raise ValueError(
                        f"dimension {dim} (logical {name!r}, size {shape[dim]}) is not divisible by "
                        f"{_describe(axes, mesh)}; logical names {names}, shape {tuple(shape)}")
                axes = ()
        owner.update((a, dim) for a in axes)
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    # Trailing None entries are dropped so that specs compare equal to their canonical form.
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def logical_to_sharding(
    names: Sequence[str | None] | None,
    mesh: Mesh,
    *,
    shape: Sequence[int] | None = None,
    rules: Mapping[str, MeshAxes] | None = None,
    allow_replicate: Collection[str] = (),
) -> NamedSharding:
    """`NamedSharding` on `mesh` for logical axis `names`; see `logical_to_spec` (and its errors)."""
    return NamedSharding(mesh, logical_to_spec(names, rules, shape=shape, mesh=mesh,
                                               allow_replicate=allow_replicate))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated `NamedSharding` on `mesh` (step counters, scalars, RNG keys)."""
    return NamedSharding(mesh, PartitionSpec())
