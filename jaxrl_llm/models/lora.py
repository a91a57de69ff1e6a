"""Low-rank adapters (LoRA, QLoRA) as weight leaves: the base stays frozen, only `a` and `b` train.

A targeted projection leaf `w [in, out]` of a parameter pytree becomes `LoraWeight(base, a, b,
scale)` with `a [in, r]`, `b [r, out]` and `scale = alpha / r`; `linear` multiplies it as

    y = x @ base + scale * (x @ a) @ b

so the decoder's layers need no change. `base` is the frozen weight, either as it was or quantized
to int8 / int4 (`QuantArray`, multiplied by `qmatmul`; QLoRA). `a` starts from qwix's LoRA
initialiser (`qwix.LoraRule().lora_a_initializer`, He-uniform over the input axis) and `b` at
zero, so a fresh adapter leaves the model's outputs bit-identical.

Functions (all pure pytree maps; they work on pure dicts and on `nnx.State`):

- `apply_lora(params, rank, alpha, targets, base_quant, key)`: wrap the target leaves;
- `merge_lora(params)`: plain weights `dequantize(base) + scale * a @ b` (sampler, eval, export);
- `split_trainable(params)` / `join_trainable(trainable, frozen)`: the optimizer's view (`a`, `b`
  only; every other leaf is None there) and the frozen rest;
- `lora_state(params)` / `load_lora(params, adapters)`: the adapters alone as a flat name -> array
  dict, for adapter files.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.quant import QuantArray, dequantize, qmatmul, quantize
from jaxrl_llm.quant.params import path_names

__all__ = ["DEFAULT_TARGETS", "BASE_QUANT_FORMATS", "LoraWeight", "apply_lora", "merge_lora", "has_lora",
           "lora_matmul", "split_trainable", "join_trainable", "lora_state", "load_lora", "adapter_name",
           "trainable_count", "trainable_value_and_grad"]

# The decoder's attention and SwiGLU projections (models/attention.py, models/mlp.py).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_QUANT_FORMATS = ("", "int8", "int4")
# Weights LoRA cannot wrap: tables looked up by row and the head the chunked log-prob helper slices.
_NOT_TARGETABLE = re.compile(r"(embed|lm_head|value_head|norm|bias)")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraWeight:
    """A frozen `[in, out]` weight plus a trainable low-rank update.

    base: `[in, out]` array or `QuantArray` (frozen).
    a: `[in, r]`; b: `[r, out]` (trainable, the base's dtype).
    scale: `alpha / r`, static (part of the tree structure).
    In the optimizer's view (`split_trainable`) `base` is None; in the frozen view `a` and `b` are.
    """

    base: Any
    a: Any
    b: Any
    scale: float = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.a.shape[0], self.b.shape[1])

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self):
        return self.base.dtype if self.base is not None else self.a.dtype

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    def dequantize(self, dtype=None) -> jax.Array:
        """The merged `[in, out]` weight `base + scale * a @ b` (float32 math), in `dtype` (default:
        the base's original dtype)."""
        base = self.base
        dense = dequantize(base, jnp.float32) if isinstance(base, QuantArray) else jnp.asarray(base, jnp.float32)
        delta = jnp.matmul(self.a.astype(jnp.float32), self.b.astype(jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
        return (dense + self.scale * delta).astype(dtype or self.dtype)


def _is_lora(x: Any) -> bool:
    return isinstance(x, LoraWeight)


def lora_matmul(x: jax.Array, w: LoraWeight, out_dtype=None) -> jax.Array:
    """`x [..., in] @ base + scale * (x @ a) @ b -> [..., out]` in `out_dtype` (default `x.dtype`).

    Both terms accumulate in float32 and are added before the one cast, so with `b = 0` the result
    equals the base's product bit for bit. `x.dtype` is the compute dtype of all three matmuls.
    """
    if x.shape[-1] != w.a.shape[0]:
        raise ValueError(f"linear: LoraWeight is [{w.a.shape[0]}, {w.b.shape[1]}]; x is {x.shape}")
    if isinstance(w.base, QuantArray):
        y = qmatmul(x, w.base).astype(jnp.float32)
    else:
        y = jnp.einsum("...i,io->...o", x, jnp.asarray(w.base).astype(x.dtype), preferred_element_type=jnp.float32)
    low = jnp.einsum("...i,ir->...r", x, w.a.astype(x.dtype), preferred_element_type=jnp.float32)
    delta = jnp.einsum("...r,ro->...o", low.astype(x.dtype), w.b.astype(x.dtype), preferred_element_type=jnp.float32)
    return (y + w.scale * delta).astype(out_dtype or x.dtype)


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    names = path_names(path)
    return names[:-1] if names and names[-1] == "value" else names  # nnx.State paths end in "value"


def adapter_name(path: tuple[Any, ...]) -> str:
    """Dotted name of a leaf path: `("layers", 0, "mixer", "q_proj")` -> `"layers.0.mixer.q_proj"`."""
    return ".".join(_names(path))


def _compile_targets(targets: Sequence[str]) -> list[re.Pattern]:
    if isinstance(targets, str) or not targets:
        raise ValueError(f"model.lora.targets must be a non-empty tuple of weight names or regexes, e.g. "
                         f"{DEFAULT_TARGETS}; got {targets!r}")
    try:
        return [re.compile(str(t)) for t in targets]
    except re.error as e:
        raise ValueError(f"model.lora.targets: {e.pattern!r} is not a valid regular expression ({e})") from None


def _targeted(names: tuple[str, ...], patterns: list[re.Pattern]) -> bool:
    """A target matches the leaf's own name (`q_proj`) or its whole dotted path (`layers\\.0\\..*`)."""
    dotted = ".".join(names)
    return any(p.fullmatch(names[-1]) or p.fullmatch(dotted) for p in patterns) if names else False


def apply_lora(params: Any, *, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS,
               base_quant: str = "", key: jax.Array) -> Any:
    """`params` with every target projection replaced by a `LoraWeight`.

    Args:
      params: a parameter pytree (pure dict or `nnx.State`) of plain arrays.
      rank: r >= 1; alpha: the update's scale is `alpha / rank`.
      targets: regexes, each matched against a leaf's name and against its dotted path; every
        target must match at least one 2-D floating projection weight.
      base_quant: "" (keep the base as it is), "int8" (per channel) or "int4" (groups of 128).
      key: PRNG key; leaf i's `a` is drawn with `fold_in(key, i)` in flattening order.
    Returns:
      The same tree; wrapped leaves hold `a [in, r]` (He-uniform), `b [r, out]` (zeros).
    """
    import qwix  # noqa: PLC0415  (heavy import, only needed here)

    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"model.lora.rank must be an integer >= 1 to apply adapters; got {rank!r}")
    if not float(alpha) > 0:
        raise ValueError(f"model.lora.alpha must be > 0; got {alpha!r}")
    if base_quant not in BASE_QUANT_FORMATS:
        raise ValueError(f"model.lora.base_quant must be one of {BASE_QUANT_FORMATS}; got {base_quant!r}")
    patterns = _compile_targets(targets)
    rank, scale = int(rank), float(alpha) / int(rank)
    rule = qwix.LoraRule(module_path=".*", rank=rank, alpha=float(alpha))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_lora)
    hits: set[int] = set()
    out = []
    for index, (path, leaf) in enumerate(flat):
        names = _names(path)
        if not any(_targeted(names, [p]) for p in patterns):
            out.append(leaf)
            continue
        where = adapter_name(path)
        if _is_lora(leaf) or isinstance(leaf, QuantArray):
            raise ValueError(f"model.lora.targets: {where} is already a {type(leaf).__name__}; apply LoRA to "
                             "plain weights once")
        if _NOT_TARGETABLE.search(names[-1]) or getattr(leaf, "ndim", 0) != 2 or \
                not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"model.lora.targets matches {where} ({getattr(leaf, 'dtype', '?')}"
                             f"{tuple(getattr(leaf, 'shape', ()))}), which LoRA cannot wrap: targets must name 2-D "
                             "projection weights (not embeddings, lm_head, norms or biases)")
        hits.update(i for i, p in enumerate(patterns) if _targeted(names, [p]))
        d_in, d_out = leaf.shape
        a = rule.lora_a_initializer(jax.random.fold_in(key, index), (d_in, rank), jnp.float32).astype(leaf.dtype)
        b = rule.lora_b_initializer(None, (rank, d_out), leaf.dtype)
        base = quantize(leaf, base_quant) if base_quant else leaf
        out.append(LoraWeight(base=base, a=a, b=b, scale=scale))
    missing = [str(targets[i]) for i in range(len(patterns)) if i not in hits]
    if missing:
        available = sorted({_names(p)[-1] for p, leaf in flat if getattr(leaf, "ndim", 0) == 2})
        raise ValueError(f"model.lora.targets {missing} match no weight of the model; 2-D weight names: {available}")
    return jax.tree_util.tree_unflatten(treedef, out)


def has_lora(params: Any) -> bool:
    """Whether any leaf of `params` is a `LoraWeight`."""
    return any(_is_lora(x) for x in jax.tree.leaves(params, is_leaf=_is_lora))


@jax.jit
def _merge(params: Any) -> Any:
    return jax.tree.map(lambda x: x.dequantize() if _is_lora(x) else x, params, is_leaf=_is_lora)


def merge_lora(params: Any) -> Any:
    """`params` with every `LoraWeight` replaced by its merged plain weight (the base's dtype);
    `params` itself when it holds none. Differentiable in `a` and `b`; jitted."""
    return _merge(params) if has_lora(params) else params


def split_trainable(params: Any) -> tuple[Any, Any]:
    """`(trainable, frozen)`: what the optimizer sees and updates, and what it must not.

    Without adapters: `(params, None)`. With them: `trainable` has the tree's structure with every
    `LoraWeight` reduced to `LoraWeight(None, a, b)` and every other leaf None (empty subtrees that
    `jax.grad`, optax and `jax.tree.map` skip: no gradient, no optimizer state); `frozen` holds the
    rest, `LoraWeight(base, None, None)`. `join_trainable` reverses it.
    """
    if not has_lora(params):
        return params, None
    trainable = jax.tree.map(lambda x: LoraWeight(None, x.a, x.b, x.scale) if _is_lora(x) else None, params,
                             is_leaf=_is_lora)
    frozen = jax.tree.map(lambda x: LoraWeight(x.base, None, None, x.scale) if _is_lora(x) else x, params,
                          is_leaf=_is_lora)
    return trainable, frozen


def join_trainable(trainable: Any, frozen: Any) -> Any:
    """The full tree from `split_trainable`'s halves (`trainable` itself when `frozen` is None)."""
    if frozen is None:
        return trainable

    def join(f, t):
        return LoraWeight(f.base, t.a, t.b, f.scale) if _is_lora(f) else f

    return jax.tree.map(join, frozen, trainable, is_leaf=_is_lora)


def trainable_count(params: Any) -> int:
    """Number of entries the optimizer updates (all of `params` without adapters)."""
    trainable, _ = split_trainable(params)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainable)))


def lora_state(params: Any) -> dict[str, jax.Array]:
    """The adapters alone: `{"<dotted path>.a": [in, r], "<dotted path>.b": [r, out]}`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_lora)[0]:
        if _is_lora(leaf):
            out[adapter_name(path) + ".a"], out[adapter_name(path) + ".b"] = leaf.a, leaf.b
    if not out:
        raise ValueError("params hold no LoRA adapters (model.lora.rank is 0)")
    return out


def load_lora(params: Any, adapters: Mapping[str, Any], *, source: str = "adapters") -> Any:
    """`params` with each `LoraWeight`'s `a` / `b` taken from `adapters` (as `lora_state` names them).

    Each array is cast to the adapter's dtype and placed with its sharding. Missing, extra or
    mis-shaped entries raise, naming `source` (e.g. the file) and the entry.
    """
    expected = lora_state(params)
    missing, extra = sorted(set(expected) - set(adapters)), sorted(set(adapters) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: adapter names do not match the model's LoRA targets; missing "
                         f"{missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                         f"{'...' if len(extra) > 4 else ''}")
    for name, like in expected.items():
        if tuple(np.shape(adapters[name])) != tuple(like.shape):
            raise ValueError(f"{source}: {name} is {tuple(np.shape(adapters[name]))}, the model's adapter is "
                             f"{tuple(like.shape)} (model.lora.rank and the architecture must match the file's)")

    def place(name: str, like: Any) -> Any:
        value = np.asarray(adapters[name]).astype(like.dtype)
        sharding = getattr(like, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

    def load(path, leaf):
        if not _is_lora(leaf):
            return leaf
        name = adapter_name(path)
        return LoraWeight(leaf.base, place(name + ".a", leaf.a), place(name + ".b", leaf.b), leaf.scale)

    return jax.tree_util.tree_map_with_path(load, params, is_leaf=_is_lora)


def trainable_value_and_grad(loss_fn):
    """`jax.value_and_grad(loss_fn, has_aux=True)` taken with respect to the trainable view of the
    first argument: `grad(params, *args) -> ((loss, aux), grads)` with `grads` shaped like
    `split_trainable(params)[0]` (all of `params` without adapters, else only the adapters; the frozen
    base is an input, so it never gets a gradient, integer codes included)."""
    value_and_grad = jax.value_and_grad(lambda t, f, *args: loss_fn(join_trainable(t, f), *args), has_aux=True)

    def grad(params, *args):
        trainable, frozen = split_trainable(params)
        return value_and_grad(trainable, frozen, *args)

    return grad
