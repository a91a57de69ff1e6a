"""Batch placement on the mesh: the one home for how data rows meet devices.

Rows (the leading `B` axis of every batch array) split over the mesh axes of the logical `batch`
axis (`data` x `fsdp`); every other axis is replicated. SFT, preference and RL batches, the
sampler's prompt rows and its KV cache all go through these functions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxrl_llm.parallel.rules import logical_to_sharding


def row_sharding(mesh: Mesh, shape: tuple[int, ...], *, allow_replicate: bool = False) -> NamedSharding:
    """`[B, ...]` arrays: B over the `batch` rule, the rest replicated.

    Raises when the row shards do not divide B, unless `allow_replicate` (then such rows are
    replicated: a micro-batch smaller than the mesh's row shards).
    """
    return logical_to_sharding(("batch",) + (None,) * (len(shape) - 1), mesh, shape=tuple(shape),
                               allow_replicate=("batch",) if allow_replicate else ())


def row_shards(mesh: Mesh | None) -> int:
    """How many ways rows are split on `mesh` (1 without a mesh)."""
    if mesh is None:
        return 1
    spec = logical_to_sharding(("batch",), mesh).spec
    axes = spec[0] if spec else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def place_rows(tree: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
    """Put every `[B, ...]` leaf of `tree` on `mesh`, rows split by `row_sharding`.

    `process_local=False`: each leaf is the whole global batch (the same on every process).
    `process_local=True`: each process holds its own rows; the global batch stacks them in process
    order (`jax.make_array_from_process_local_data`), as a per-host data loader produces them.
    """
    def one(x):
        if x is None:
            return None
        if not process_local:
            return jax.device_put(x, row_sharding(mesh, np.shape(x)))
        local = np.asarray(x)
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        return jax.make_array_from_process_local_data(row_sharding(mesh, global_shape), local, global_shape)

    return jax.tree.map(one, tree)


def constrain_rows(tree: Any, mesh: Mesh | None) -> Any:
    """Inside `jit`: pin every leaf's rows back to the `batch` layout (slicing a scanned axis, or a
    cache update, can lose it). A no-op without a mesh and on scalars; rows that the row shards do
    not divide (a micro-batch smaller than the shard count) stay replicated, as XLA would."""
    if mesh is None:
        return tree

    def one(x):
        if jnp.ndim(x) == 0:
            return x
        return jax.lax.with_sharding_constraint(x, row_sharding(mesh, jnp.shape(x), allow_replicate=True))

    return jax.tree.map(one, tree)


def split_strided(tree: Any, num_splits: int, *, field: str = "the number of splits") -> Any:
    """Every leaf `[B, ...]` -> `[M, B / M, ...]`; split m holds rows m, m + M, m + 2M, ...

    Strided rows keep each micro-batch spread over the batch-sharded devices (and over prompt
    groups). `field` names the config field in the error when M does not divide B.
    """
    leaves = [x for x in jax.tree.leaves(tree)]
    b = np.shape(leaves[0])[0]
    if num_splits < 1 or b % num_splits:
        raise ValueError(f"{field}={num_splits} must divide the batch size {b}")
    m = num_splits
    return jax.tree.map(lambda x: jnp.swapaxes(jnp.reshape(x, (b // m, m, *np.shape(x)[1:])), 0, 1), tree)


def merge_strided(tree: Any) -> Any:
    """The inverse of `split_strided`: every leaf `[M, B / M, ...]` -> `[B, ...]` in the original row order."""
    return jax.tree.map(lambda x: jnp.reshape(jnp.swapaxes(x, 0, 1), (-1, *np.shape(x)[2:])), tree)


def host_array(x: Any) -> Any:
    """`x` as a host numpy array on every process (non-arrays pass through).

    A fully addressable or fully replicated array is read locally; an array sharded across
    processes is all-gathered (`multihost_utils.process_allgather`), a collective every process
    must enter. This is the boundary where device results (rollouts, log-probs) come back to host
    code that scores, groups and logs them.
    """
    if not isinstance(x, jax.Array):
        return x
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree: Any) -> Any:
    """`host_array` on every leaf of `tree` (NamedTuples and dataclass pytrees keep their type)."""
    return jax.tree.map(host_array, tree)
