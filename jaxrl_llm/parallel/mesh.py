"""Device mesh with axes `("data", "fsdp", "tensor")`.

Axis sizes come from a config; one size may be -1, meaning "all devices left over". Every axis is
`AxisType.Auto`: shardings are given at `jit` boundaries and XLA propagates them inside, so model
code never names mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolve `{"data": d, "fsdp": f, "tensor": t}` (one may be -1) into a shape over `MESH_AXES`.

    Missing axes default to 1. Without a -1 the mesh may use fewer devices than there are (the
    first `d * f * t`), as long as that product divides the device count. Raises `ValueError`
    naming the axis when a size is not a positive integer or -1, when more than one axis is -1,
    or when the sizes do not divide `num_devices`.
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes must be among {MESH_AXES}; got unknown {sorted(unknown)}")
    shape = []
    for axis in MESH_AXES:
        size = sizes.get(axis, 1)
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{axis} must be a positive int or -1 (the rest); got {size!r}")
        shape.append(int(size))
    rest = [a for a, s in zip(MESH_AXES, shape) if s == -1]
    if len(rest) > 1:
        raise ValueError(f"at most one mesh axis may be -1; got {rest}")
    fixed = math.prod(s for s in shape if s != -1)
    if num_devices % fixed != 0:
        raise ValueError(
            f"mesh sizes {dict(zip(MESH_AXES, shape))} (product {fixed}) must divide the "
            f"device count {num_devices}"
        )
    if rest:
        shape[MESH_AXES.index(rest[0])] = num_devices // fixed
    return tuple(shape)  # type: ignore[return-value]


def make_mesh(
    data: int = 1,
    fsdp: int = -1,
    tensor: int = 1,
    *,
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """Build a `Mesh` over `devices` (default: all devices) with axes `MESH_AXES`.

    The first `data * fsdp * tensor` devices are used (all of them when one size is -1).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape({"data": data, "fsdp": fsdp, "tensor": tensor}, len(devices))
    grid = np.asarray(devices[: math.prod(shape)], dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(cfg: Mapping[str, Any], *, devices: Sequence[Any] | None = None) -> Mesh:
    """`make_mesh` from a config section with fields `data`, `fsdp`, `tensor` (missing = 1)."""
    sizes = {axis: cfg[axis] for axis in MESH_AXES if axis in cfg}
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    return make_mesh(*shape, devices=devices)
