"""The one table mapping logical axis names to mesh axes, and its translation to shardings.

Parameters and activations name their dimensions logically (`embed`, `heads`, `mlp`, `vocab`,
`batch`, ...); only this table knows how those names land on the mesh. Changing a parallelism
strategy means editing `DEFAULT_RULES` (or passing another table), nothing else.

When a mesh axis does not divide a dimension (e.g. 2 KV heads over a tensor axis of 4) that
dimension is replicated instead: the rule stays in the table and simply does not apply there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: Mapping[str, MeshAxes] | None = None,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Translate logical axis `names` (one per dimension) into a `PartitionSpec` of mesh axes.

    With `shape` and `mesh`, a dimension whose size is not divisible by the product of its mesh
    axis sizes is replicated. A mesh axis is used at most once: a later dimension that maps to an
    axis already taken is replicated (the first dimension keeps it).
    """
    rules = DEFAULT_RULES if rules is None else rules
    if names is None:
        names = () if shape is None else (None,) * len(shape)
    names = tuple(names)
    if shape is not None and len(shape) != len(names):
        raise ValueError(
            f"logical axis names {names} must have one entry per dimension of shape {tuple(shape)}"
        )
    if (shape is None) != (mesh is None):
        raise ValueError("logical_to_spec needs both shape and mesh (or neither)")
    used: set[str] = set()
    entries: list[MeshAxes] = []
    for dim, name in enumerate(names):
        axes = _as_tuple(rules.get(name)) if name is not None else ()
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        if any(a in used for a in axes):
            axes = ()
        if axes and mesh is not None and shape is not None:
            size = 1
            for a in axes:
                size *= mesh.shape[a]
            if shape[dim] % size != 0:
                axes = ()
        used.update(axes)
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
) -> NamedSharding:
    """`NamedSharding` on `mesh` for logical axis `names`; see `logical_to_spec`."""
    if shape is None:
        return NamedSharding(mesh, logical_to_spec(names, rules))
    return NamedSharding(mesh, logical_to_spec(names, rules, shape=shape, mesh=mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated `NamedSharding` on `mesh` (step counters, scalars, RNG keys)."""
    return NamedSharding(mesh, PartitionSpec())
