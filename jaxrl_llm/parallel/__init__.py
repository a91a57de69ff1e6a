"""Parallelism: device meshes, the logical-axis sharding rules table and multi-host start-up.

`mesh.make_mesh` builds a `("data", "fsdp", "tensor")` mesh; `rules` maps the logical axis names
that parameters declare (`embed`, `heads`, `kv_heads`, `mlp`, `vocab`, `batch`) to mesh axes in one
table; `init.init_sharded` creates a model's parameters already sharded; `distributed` wraps
`jax.distributed.initialize` for multi-host runs.
"""

from jaxrl_llm.parallel.mesh import MESH_AXES, make_mesh, mesh_from_config, resolve_mesh_shape
from jaxrl_llm.parallel.rules import (
    DEFAULT_RULES,
    logical_to_sharding,
    logical_to_spec,
    replicated,
)

__all__ = [
    "MESH_AXES",
    "make_mesh",
    "mesh_from_config",
    "resolve_mesh_shape",
    "DEFAULT_RULES",
    "logical_to_spec",
    "logical_to_sharding",
    "replicated",
]
