"""Sharded model initialisation: abstract first, then materialise inside one `jit`.

`nnx.eval_shape` describes the model (shapes, dtypes and the logical axis names each parameter
declares in its `out_sharding` metadata) without allocating anything; the rules table turns those
names into `NamedSharding`s; the real initialiser then runs under `jax.jit(out_shardings=...)`, so
every device creates only its own shard and the model never exists whole on one host.

Parameters travel as plain nested dicts of arrays (`nnx.to_pure_dict` layout): optimizers,
checkpoints and `jit` see ordinary pytrees, and `ModelParts.merge` rebuilds the module from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding

from jaxrl_llm.parallel.rules import MeshAxes, logical_to_sharding

PureDict = dict[Any, Any]


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a variable declares (`out_sharding` metadata), or None."""
    names = variable.get_metadata().get("out_sharding", None)
    return None if names is None else tuple(names)


def _unsharded(factory: Callable[[], nnx.Module]) -> Callable[[], nnx.Module]:
    # Logical names are not mesh axes: keep flax from applying them as shardings eagerly; the
    # rules table decides placement through `out_shardings` instead.
    def build() -> nnx.Module:
        with nnx.use_eager_sharding(False):
            return factory()

    return build


def _fill(template: nnx.State, values: PureDict) -> nnx.State:
    flat = traverse_util.flatten_dict(values) if values else {}
    return nnx.from_flat_state([(path, var.replace(flat[path])) for path, var in nnx.to_flat_state(template)])


@dataclasses.dataclass(frozen=True, eq=False)
class ModelParts:
    """The static half of a split module: its graph and abstract (shape-only) states.

    Compared and hashed by identity, so it can key caches of compiled functions.
    """

    graphdef: nnx.GraphDef
    abstract_params: nnx.State
    abstract_rest: nnx.State

    def merge(self, params: PureDict, rest: PureDict | None = None) -> nnx.Module:
        """Rebuild the module from pure-dict `params` (and non-parameter state `rest`)."""
        return nnx.merge(self.graphdef, _fill(self.abstract_params, params), _fill(self.abstract_rest, rest or {}))

    def param_shapes(self) -> PureDict:
        """`ShapeDtypeStruct` per parameter, in the pure-dict layout."""
        return nnx.to_pure_dict(self.abstract_params)


def split_module(module: nnx.Module) -> tuple[PureDict, PureDict]:
    """`(params, rest)` pure dicts of a concrete module (`nnx.Param` vs everything else)."""
    _, params, rest = nnx.split(module, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def abstract_model(factory: Callable[[], nnx.Module]) -> ModelParts:
    """`ModelParts` of `factory()` with nothing allocated."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(_unsharded(factory)), nnx.Param, ...)
    return ModelParts(graphdef, params, rest)


def state_shardings(
    abstract_state: nnx.State, mesh: Mesh, rules: Mapping[str, MeshAxes] | None = None
) -> PureDict:
    """Pure dict of `NamedSharding` per variable from its logical names (undeclared: replicated).

    A rule that cannot apply (see `rules.logical_to_spec`) raises `ValueError` naming the variable.
    """

    def to_sharding(path, variable: nnx.Variable) -> NamedSharding:
        shape = variable.get_value().shape
        try:
            return logical_to_sharding(logical_names(variable), mesh, shape=shape, rules=rules)
        except ValueError as err:
            raise ValueError(f"{jax.tree_util.keystr(path, simple=True, separator='.')}: {err}") from None

    shardings = jax.tree_util.tree_map_with_path(to_sharding, abstract_state,
                                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings, extract_fn=lambda x: x)


def init_sharded(
    factory: Callable[[], nnx.Module],
    mesh: Mesh,
    rules: Mapping[str, MeshAxes] | None = None,
) -> tuple[ModelParts, PureDict, PureDict, PureDict]:
    """Create `factory()`'s state sharded on `mesh` by the logical-axis `rules`.

    Returns `(parts, params, rest, params_shardings)`: pure dicts of arrays for the `nnx.Param`
    variables and for all other state, plus the parameters' `NamedSharding`s.
    """
    parts = abstract_model(factory)
    params_shardings = state_shardings(parts.abstract_params, mesh, rules)
    rest_shardings = state_shardings(parts.abstract_rest, mesh, rules)
    build = _unsharded(factory)
    params, rest = jax.jit(lambda: split_module(build()), out_shardings=(params_shardings, rest_shardings))()
    return parts, params, rest, params_shardings
