"""Where a run's policy starts: `model.init_from`.

    ""             a random initialisation of `model.preset` with the section's fields (`cfg.seed`)
    "hf:PATH"      a Hugging Face checkpoint folder (config.json + safetensors), loaded shard by shard
                   onto the mesh; the architecture is config.json's
    "orbax:PATH"   the parameters of a run of this package: its output directory, its `checkpoints/`
                   folder, or one step folder inside it; the architecture is that run's saved model
                   section (its `config.json`) when there is one, else this config's

Over a checkpoint's architecture the model section may still set the fields in
`RUNTIME_MODEL_FIELDS` (compute and storage dtypes, the critic's value head, the attention
implementation, rematerialisation): they change how the same weights are computed with, not which
weights exist. Any other field that disagrees with the checkpoint is reported once, then ignored.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax

from jaxrl_llm.models.config import ModelConfig, preset

__all__ = ["RUNTIME_MODEL_FIELDS", "parse_init_from", "check_init_from", "orbax_location", "runtime_overrides",
           "checkpoint_model_config"]

RUNTIME_MODEL_FIELDS = ("dtype", "param_dtype", "value_head", "attention_impl", "attention_block", "remat")
# Model-section keys that are not `ModelConfig` fields.
SECTION_KEYS = ("preset", "init_from", "lora")
_SOURCES = ("hf", "orbax")


def parse_init_from(value: str, field: str = "model.init_from") -> tuple[str, str]:
    """`("", "")`, `("hf", path)` or `("orbax", path)`; anything else raises naming `field`."""
    value = str(value or "")
    if not value:
        return "", ""
    kind, sep, path = value.partition(":")
    if not sep or kind not in _SOURCES or not path:
        raise ValueError(f"{field} must be '' (random init), 'hf:PATH' or 'orbax:PATH'; got {value!r}")
    return kind, os.path.expanduser(path)


def orbax_location(path: str, field: str = "model.init_from") -> tuple[str, int, str | None]:
    """`(checkpoints_dir, step, run_config_json or None)` for a run directory, its `checkpoints/`
    folder or a step folder in it; the newest step unless a step folder is named."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{field}=orbax:{path}: no such directory (expected a run's output_dir, "
                                "its checkpoints/ folder or a step folder)")
    step = None
    if os.path.basename(path).isdigit() and os.path.isdir(os.path.dirname(path)):
        step, path = int(os.path.basename(path)), os.path.dirname(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d)))
    if not steps:
        raise FileNotFoundError(f"{field}=orbax:{path}: holds no checkpoint step folders")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{field}: step {step} is not under {path}; steps there: {steps}")
    run_config = os.path.join(os.path.dirname(path), "config.json")
    return path, step, run_config if os.path.isfile(run_config) else None


def check_init_from(model_cfg: Mapping[str, Any], field: str = "model.init_from") -> None:
    """Fails before anything is built when the source named by `field` is missing or malformed."""
    kind, path = parse_init_from(model_cfg.get("init_from", ""), field)
    if kind == "hf":
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{field}=hf:{path}: {config_file} not found (a Hugging Face checkpoint "
                                    "folder holds config.json and model.safetensors or an index with shards)")
    elif kind == "orbax":
        orbax_location(path, field)


def runtime_overrides(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `RUNTIME_MODEL_FIELDS` the model section sets."""
    return {k: model_cfg[k] for k in RUNTIME_MODEL_FIELDS if k in model_cfg}


def report_ignored(model_cfg: Mapping[str, Any], config: ModelConfig, source: str) -> list[str]:
    """Warns once about architecture fields of the model section that the checkpoint overrides."""
    ignored = []
    for key, value in model_cfg.items():
        if key in SECTION_KEYS or key in RUNTIME_MODEL_FIELDS or not hasattr(config, key):
            continue
        have = getattr(config, key)
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != \
                (tuple(have) if isinstance(have, (list, tuple)) else have):
            ignored.append(f"model.{key}={value!r} (checkpoint: {have!r})")
    if ignored:
        warnings.warn(f"{source} sets the architecture; ignoring {', '.join(ignored)}", stacklevel=3)
    return ignored


def _section_fields(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in model_cfg.items()}


def checkpoint_model_config(model_cfg: Mapping[str, Any], field: str = "model.init_from") -> ModelConfig | None:
    """The `ModelConfig` an orbax source was trained with (its run's model section with this section's
    runtime fields over it), or None when the run saved no config (this section's own is used)."""
    kind, path = parse_init_from(model_cfg.get("init_from", ""), field)
    if kind != "orbax":
        raise ValueError(f"{field}: checkpoint_model_config reads orbax sources only; got {kind!r}")
    _, _, run_config = orbax_location(path, field)
    if run_config is None:
        return None
    try:
        with open(run_config, encoding="utf-8") as f:
            flat = json.load(f)  # dotted keys, as the run directory writes them
        saved = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{field}: {run_config} is not a readable run config ({e})") from None
    if "preset" not in saved:
        return None
    fields = {k: v for k, v in saved.items() if k.split(".")[0] not in SECTION_KEYS}
    fields.update(runtime_overrides(model_cfg))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    config = preset(saved["preset"], **fields)
    report_ignored(_section_fields(model_cfg), config, f"{field}=orbax:{path}")
    return config


def restore_orbax_params(path: str, parts: Any, shardings: Any, field: str = "model.init_from") -> Any:
    """The saved run's parameters at `path` (see `orbax_location`), placed with `shardings`."""
    from jaxrl_llm.train.checkpoint import Checkpointer  # noqa: PLC0415  (orbax is heavy; only here)

    directory, step, _ = orbax_location(path, field)
    like = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        parts.param_shapes(), shardings)
    checkpointer = Checkpointer(directory, max_to_keep=None)
    try:
        return checkpointer.restore_params(like, step=step)
    finally:
        checkpointer.close()
