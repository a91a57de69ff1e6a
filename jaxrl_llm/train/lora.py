"""LoRA in the trainers: the `model.lora` section, adapters on the built policy, adapter files.

Fields (`configs/sft_tiny.py`; the RL config copies the model section):

    model.lora.rank        0 = off; r >= 1 wraps the targets in `models.lora.LoraWeight`
    model.lora.alpha       the update is scaled by alpha / rank
    model.lora.targets     regexes matched against weight names / dotted paths (attention + MLP projections)
    model.lora.base_quant  "" | "int8" | "int4": the frozen base as a `QuantArray` (QLoRA)
    model.lora.adapters    "" or an adapters file (`lora_adapters.safetensors` of an earlier run) to start from

`build_policy` calls `lora_policy` after the weights are built or loaded, so SFT, RL and their
warm-up all train the same adapters; `TrainState.params` holds the `LoraWeight` leaves (checkpoints
carry base and adapters), the optimizer sees `models.lora.split_trainable`'s view (adapters only).
At the end of a run `save_adapters` writes `<output_dir>/lora_adapters.safetensors`; `export.hf_dir`
gets the merged weights. `model.init_from=orbax:RUN` of a LoRA run loads that run's merged weights
(`restore_merged_params`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrl_llm.models.lora import (BASE_QUANT_FORMATS, DEFAULT_TARGETS, LoraWeight, apply_lora, has_lora, load_lora,
                                   lora_state, merge_lora)
from jaxrl_llm.quant import QuantArray
from jaxrl_llm.train.init_from import orbax_location, restore_orbax_params

__all__ = ["LORA_FILE", "LoraSpec", "lora_spec", "check_lora_config", "check_lora_rl", "lora_shardings",
           "apply_lora_sharded", "lora_policy", "save_adapters", "read_adapters", "merged_params",
           "restore_merged_params", "save_run_adapters"]

LORA_FILE = "lora_adapters.safetensors"
_KEY_SALT = 0x4C6F5241  # the adapters' init key is fold_in(key(seed), this): independent of the model's init
_FORMAT = "jaxrl_llm.lora"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A validated `model.lora` section with rank >= 1."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base_quant: str = ""
    adapters: str = ""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_spec(model_cfg: Mapping[str, Any], field: str = "model.lora") -> LoraSpec | None:
    """The `LoraSpec` of a model section, or None when it has no `lora` section or rank 0.

    Raises `ValueError` naming the field for a bad rank, alpha, targets or base_quant.
    """
    section = model_cfg.get("lora", None) if model_cfg is not None else None
    if not section:
        return None
    rank = section.get("rank", 0)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"{field}.rank must be an integer >= 0 (0 = off); got {rank!r}")
    if rank == 0:
        return None
    alpha = section.get("alpha", 2.0 * rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"{field}.alpha must be a number > 0; got {alpha!r}")
    targets = section.get("targets", DEFAULT_TARGETS)
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets or \
            not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{field}.targets must be a non-empty tuple of weight names or regexes, e.g. "
                         f"{DEFAULT_TARGETS}; got {targets!r}")
    base_quant = section.get("base_quant", "")
    if base_quant not in BASE_QUANT_FORMATS:
        raise ValueError(f"{field}.base_quant must be one of {BASE_QUANT_FORMATS}; got {base_quant!r}")
    adapters = str(section.get("adapters", "") or "")
    return LoraSpec(int(rank), float(alpha), tuple(str(t) for t in targets), str(base_quant),
                    os.path.expanduser(adapters))


def check_lora_config(model_cfg: Mapping[str, Any], field: str = "model.lora") -> LoraSpec | None:
    """`lora_spec`, plus the checks that need the file system, before anything is built."""
    spec = lora_spec(model_cfg, field)
    if spec is None:
        return None
    if importlib.util.find_spec("safetensors") is None:
        raise ValueError(f"{field}.rank > 0 writes {LORA_FILE} at the end of the run, which needs the "
                         "`safetensors` package (pip install 'jaxrl_llm[hf]')")
    if spec.adapters and not os.path.isfile(spec.adapters):
        raise FileNotFoundError(f"{field}.adapters={spec.adapters!r}: no such file (expected a {LORA_FILE} "
                                "written by an earlier LoRA run)")
    return spec


def check_lora_rl(cfg: Any) -> LoraSpec | None:
    """The RL-specific limits of LoRA: DGG gates on the lm_head gradient, which adapters freeze."""
    spec = check_lora_config(cfg.model)
    if spec is not None and bool(cfg.rl.dgg.enabled):
        raise ValueError("rl.dgg.enabled gates on the lm_head gradient, but model.lora.rank > 0 freezes the "
                         "lm_head (adapters train only model.lora.targets): set --config.rl.dgg.enabled=false")
    return spec


def _fit(spec: tuple, shape: tuple[int, ...], mesh: Any) -> PartitionSpec:
    """`spec` with every entry its mesh axes do not divide replaced by None (replicated)."""
    out = []
    for axes, dim in zip(spec, shape):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def _leaf_shardings(sharding: Any, leaf: LoraWeight) -> LoraWeight:
    """Shardings of a `LoraWeight` whose base weight had `sharding`: `a [in, r]` keeps the input
    axis's, `b [r, out]` the output axis's, a `QuantArray` base its weight's (codes) and the output
    axis's (scales)."""
    if not isinstance(sharding, NamedSharding):
        return jax.tree.map(lambda _: sharding, leaf)
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    in_axes, out_axes = spec[0], spec[1]

    def make(axes: tuple, shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(sharding.mesh, _fit(axes, shape, sharding.mesh))

    base = leaf.base
    if isinstance(base, QuantArray):
        base = dataclasses.replace(base, values=make((in_axes, out_axes), base.values.shape),
                                   scale=make((None, out_axes), base.scale.shape))
    else:
        base = make((in_axes, out_axes), base.shape)
    return LoraWeight(base, make((in_axes, None), leaf.a.shape), make((None, out_axes), leaf.b.shape), leaf.scale)


def lora_shardings(shardings: Any, lora_abstract: Any) -> Any:
    """Shardings for the tree `lora_abstract` (`apply_lora` of a tree placed with `shardings`)."""
    return jax.tree.map(lambda s, leaf: _leaf_shardings(s, leaf) if isinstance(leaf, LoraWeight) else s,
                        shardings, lora_abstract, is_leaf=lambda x: isinstance(x, LoraWeight))


def _adapter_fn(spec: LoraSpec):
    return functools.partial(apply_lora, rank=spec.rank, alpha=spec.alpha, targets=spec.targets,
                             base_quant=spec.base_quant)


def _key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(int(seed)), _KEY_SALT)


def apply_lora_sharded(params: Any, shardings: Any, spec: LoraSpec, *, seed: int,
                       donate: bool = False) -> tuple[Any, Any]:
    """`(params, shardings)` with adapters applied in one `jit`, each new leaf placed per
    `lora_shardings`. With `donate`, the input buffers are reused (the caller's `params` die)."""
    fn = _adapter_fn(spec)
    key = _key(seed)
    abstract = jax.eval_shape(lambda p, k: fn(p, key=k), params, key)  # bad targets fail here, before compiling
    new_shardings = lora_shardings(shardings, abstract)
    out = jax.jit(lambda p, k: fn(p, key=k), out_shardings=new_shardings,
                  donate_argnums=(0,) if donate else ())(params, key)
    return out, new_shardings


def lora_policy(model_cfg: Mapping[str, Any], params: Any, shardings: Any, *, seed: int,
                field: str = "model.lora") -> tuple[Any, Any]:
    """`(params, shardings)` of the policy a model section describes: unchanged without LoRA, else
    with adapters (from `model.lora.adapters` when set, otherwise freshly initialised)."""
    spec = check_lora_config(model_cfg, field)
    if spec is None:
        return params, shardings
    # Donated buffers are reused for the unchanged leaves; a quantized base has no float buffer to reuse.
    params, shardings = apply_lora_sharded(params, shardings, spec, seed=seed, donate=not spec.base_quant)
    if spec.adapters:
        adapters, meta = read_adapters(spec.adapters)
        if abs(float(meta.get("alpha", spec.alpha)) - spec.alpha) > 1e-12 * spec.alpha:
            raise ValueError(f"{field}.adapters={spec.adapters!r} was trained with alpha={meta['alpha']}; "
                             f"{field}.alpha={spec.alpha} would rescale it")
        params = load_lora(params, adapters, source=spec.adapters)
    return params, shardings


def _host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_adapters(params: Any, path: str, spec: LoraSpec) -> str:
    """Writes the adapters of `params` (`lora_state` names) to the safetensors file `path`, with the
    spec as metadata. On several processes every process must call this; process 0 writes."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    tensors = {name: np.ascontiguousarray(_host(x)) for name, x in lora_state(params).items()}
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"format": _FORMAT, "rank": str(spec.rank), "alpha": repr(spec.alpha),
                "targets": json.dumps(list(spec.targets)), "base_quant": spec.base_quant}
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    return path


def read_adapters(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`(arrays by name, metadata)` of an adapters file written by `save_adapters`."""
    from safetensors import safe_open  # noqa: PLC0415

    from jaxrl_llm.models.safetensors_io import SafetensorsFile  # noqa: PLC0415  (reads bfloat16 too)

    try:
        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
        file = SafetensorsFile(path)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError for malformed files)
        raise ValueError(f"{path}: not a readable adapters file ({e})") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: not an adapters file of this package (metadata format={meta.get('format')!r})")
    meta["alpha"] = float(meta["alpha"])
    meta["rank"] = int(meta["rank"])
    return {name: np.asarray(file.array(name)) for name in file.entries}, meta


def merged_params(params: Any, shardings: Any | None = None) -> Any:
    """`merge_lora(params)` (plain weights), placed with the pre-LoRA `shardings` when given."""
    if not has_lora(params):
        return params
    if shardings is None:
        return merge_lora(params)
    return jax.jit(merge_lora, out_shardings=shardings)(params)


def _saved_spec(run_config: str | None, field: str) -> LoraSpec | None:
    if run_config is None:
        return None
    try:
        with open(run_config, encoding="utf-8") as f:
            saved = json.load(f)
        # A run directory's config.json is flat ("model.lora.rank": 4); a nested {"model": {...}} reads too.
        section = (saved.get("model") or {}).get("lora") if isinstance(saved.get("model"), dict) else \
            {k[len("model.lora."):]: v for k, v in saved.items() if k.startswith("model.lora.")}
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{field}: {run_config} is not a readable run config ({e})") from None
    spec = lora_spec({"lora": section}, f"{field} (the run's model.lora)")
    return None if spec is None else dataclasses.replace(spec, adapters="")


def restore_merged_params(path: str, parts: Any, shardings: Any, field: str = "model.init_from") -> Any:
    """The parameters of the run at `path` (`init_from.orbax_location`) as plain weights: a LoRA run's
    (its config.json has `model.lora.rank > 0`) are restored with their adapters and merged."""
    from jaxrl_llm.train.checkpoint import Checkpointer  # noqa: PLC0415  (orbax is heavy; only here)

    directory, step, run_config = orbax_location(path, field)
    spec = _saved_spec(run_config, field)
    if spec is None:
        return restore_orbax_params(path, parts, shardings, field)
    abstract = jax.eval_shape(lambda p, k: _adapter_fn(spec)(p, key=k), parts.param_shapes(), _key(0))
    like = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                        lora_shardings(shardings, abstract))
    checkpointer = Checkpointer(directory, max_to_keep=None)
    try:
        restored = checkpointer.restore_params(like, step=step)
    finally:
        checkpointer.close()
    return merged_params(restored, shardings)


def save_run_adapters(model_cfg: Mapping[str, Any], params: Any, run_dir: str) -> str | None:
    """`<run_dir>/lora_adapters.safetensors` of a LoRA run's final `params` (None without LoRA)."""
    spec = lora_spec(model_cfg)
    if spec is None or not has_lora(params):
        return None
    return save_adapters(params, os.path.join(run_dir, LORA_FILE), spec)
