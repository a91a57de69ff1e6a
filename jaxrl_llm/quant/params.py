"""Quantize (or fake-quantize) the linear weights of a whole parameter pytree.

Which leaves are linear weights is decided by a predicate on the leaf's path and value. The
default takes floating 2-D leaves and skips any whose path names a norm, a bias or a scale, and
(unless `skip_embeddings=False`) an embedding table. Stacked weights (`[L, in, out]` for scanned
layers) need a predicate that accepts them; `quantize` treats leading axes as batch axes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_llm.quant.array import QuantArray, dequantize, quantize
from jaxrl_llm.quant.fake import fake_quant

__all__ = [
    "path_names",
    "is_linear_weight",
    "quantize_params",
    "fake_quant_params",
    "dequantize_params",
]

Predicate = Callable[[tuple[str, ...], Any], bool]

# Matched against each lower-cased path component.
_NORM = re.compile(r"(norm|^ln(_|\d|$)|layer_?norm)")
_BIAS_OR_SCALE = re.compile(r"(^|_)(bias|b|scale|gamma|beta)$")
_EMBEDDING = re.compile(r"(embed|^wte$|^wpe$)")


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """Plain names of a `jax.tree_util` key path: `(DictKey('mlp'), GetAttrKey('kernel'))` ->
    `('mlp', 'kernel')`."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def is_linear_weight(names: tuple[str, ...], leaf: Any, *, skip_embeddings: bool = True) -> bool:
    """Default predicate: a floating 2-D leaf that is not a norm, bias, scale or (optionally)
    an embedding."""
    if not hasattr(leaf, "ndim") or leaf.ndim != 2:
        return False
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        return False
    lowered = [n.lower() for n in names]
    if any(_NORM.search(n) or _BIAS_OR_SCALE.search(n) for n in lowered):
        return False
    if skip_embeddings and any(_EMBEDDING.search(n) for n in lowered):
        return False
    return True


def _map_selected(
    fn: Callable[[Any], Any],
    params: Any,
    predicate: Predicate | None,
    skip_embeddings: bool,
) -> Any:
    if predicate is None:
        predicate = functools.partial(is_linear_weight, skip_embeddings=skip_embeddings)

    def visit(path, leaf):
        return fn(leaf) if predicate(path_names(path), leaf) else leaf

    return jax.tree_util.tree_map_with_path(visit, params)


def quantize_params(
    params: Any,
    fmt: str = "int4",
    predicate: Predicate | None = None,
    *,
    skip_embeddings: bool = True,
    **quantize_kwargs: Any,
) -> Any:
    """The same pytree with every selected leaf replaced by `quantize(leaf, fmt)`.

    Args:
      params: any pytree of arrays (dicts, `nnx.State`, ...).
      fmt: "int8", "int4" or "fp8".
      predicate: `predicate(names, leaf) -> bool` on the path names (see `path_names`); default
        `is_linear_weight`. Unselected leaves are returned as the very same objects.
      skip_embeddings: used by the default predicate only.
      quantize_kwargs: forwarded to `quantize` (`group_size`, `storage_dtype`).
    """
    return _map_selected(
        lambda w: quantize(w, fmt, **quantize_kwargs), params, predicate, skip_embeddings
    )


def fake_quant_params(
    params: Any,
    fmt: str = "int4",
    predicate: Predicate | None = None,
    *,
    skip_embeddings: bool = True,
    **quantize_kwargs: Any,
) -> Any:
    """The same pytree with every selected leaf fake-quantized (straight-through gradients).

    Selects the same leaves as `quantize_params` with the same arguments, so a training forward
    on `fake_quant_params(params)` sees the weights of a rollout on `quantize_params(params)`.
    """
    return _map_selected(
        lambda w: fake_quant(w, fmt, **quantize_kwargs), params, predicate, skip_embeddings
    )


def dequantize_params(params: Any, dtype: Any = None) -> Any:
    """Replaces every `QuantArray` in `params` by its dequantized array."""
    return jax.tree_util.tree_map(
        lambda x: dequantize(x, dtype) if isinstance(x, QuantArray) else x,
        params,
        is_leaf=lambda x: isinstance(x, QuantArray),
    )
