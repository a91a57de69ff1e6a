"""Hugging Face checkpoints in and out: `config.json` + safetensors <-> `Decoder`.

HF linears store `[out, in]`; ours store `[in, out]`, so those tensors are transposed on the way in
and out; depthwise conv weights `[C, 1, W]` are stored `[C, W]`. Loading reads one tensor at a
time; with a mesh, every device's shard is read straight from the memory-mapped file into its slot
of a sharded array (`jax.make_array_from_callback`), so no host ever holds a full copy per device.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxrl_llm.models.config import ATTENTION, QWEN3_NEXT, ModelConfig
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.models.hf_config import from_hf_config, to_hf_config
from jaxrl_llm.models.lora import LoraWeight
from jaxrl_llm.models.qwen3_next import GATED_DELTANET
from jaxrl_llm.models.safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointReader
from jaxrl_llm.parallel.rules import logical_to_sharding

ShardingRules = Callable[[tuple[str | None, ...], Mesh], NamedSharding]
StatePath = tuple[Any, ...]
# How a tensor is stored in HF relative to ours: as is, transposed (linears), or `[C, 1, W]` for our
# `[C, W]` (depthwise conv).
SAME, TRANSPOSED, CONV = "same", "transposed", "conv"
# Gated DeltaNet tensors: HF name under `linear_attn.` -> (our name under `mixer.delta.`, layout).
_GATED_DELTANET_TENSORS = {
    "in_proj_qkvz.weight": ("in_proj_qkvz", TRANSPOSED),
    "in_proj_ba.weight": ("in_proj_ba", TRANSPOSED),
    "conv1d.weight": ("conv1d", CONV),
    "dt_bias": ("dt_bias", SAME),
    "A_log": ("A_log", SAME),
    "norm.weight": ("norm", SAME),
    "out_proj.weight": ("out_proj", TRANSPOSED),
}


def hf_tensor_names(config: ModelConfig) -> dict[str, tuple[StatePath, str]]:
    """HF tensor name -> (path in `nnx.state(Decoder)`, layout: `SAME`, `TRANSPOSED` or `CONV`)."""
    names: dict[str, tuple[StatePath, str]] = {
        "model.embed_tokens.weight": (("embed",), SAME),
        "model.norm.weight": (("final_norm", "scale"), SAME),
    }
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head",), TRANSPOSED)
    for i, layer_type in enumerate(config.resolved_layer_types):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        names[hf + "input_layernorm.weight"] = (ours + ("input_norm", "scale"), SAME)
        names[hf + "post_attention_layernorm.weight"] = (ours + ("post_mixer_norm", "scale"), SAME)
        if layer_type == ATTENTION:
            names.update(_attention_tensor_names(config, hf + "self_attn.", ours + ("mixer",)))
        elif layer_type == GATED_DELTANET and config.architecture == QWEN3_NEXT:
            for hf_name, (name, layout) in _GATED_DELTANET_TENSORS.items():
                names[hf + "linear_attn." + hf_name] = (ours + ("mixer", "delta", name), layout)
        else:
            raise ValueError(f"layer {i} has type {layer_type!r}, which does not map to {config.architecture} "
                             f"checkpoints")
        for proj in ("gate", "up", "down"):
            names[hf + f"mlp.{proj}_proj.weight"] = (ours + ("mlp", f"{proj}_proj"), TRANSPOSED)
    return names


def _attention_tensor_names(config: ModelConfig, hf: str, ours: StatePath) -> dict[str, tuple[StatePath, str]]:
    names = {hf + f"{proj}_proj.weight": (ours + (f"{proj}_proj",), TRANSPOSED) for proj in "qkvo"}
    if config.attention_bias:
        names.update({hf + f"{proj}_proj.bias": (ours + (f"{proj}_bias",), SAME) for proj in "qkv"})
    if config.qk_norm:
        names.update({hf + f"{proj}_norm.weight": (ours + (f"{proj}_norm", "scale"), SAME) for proj in "qk"})
    return names


def hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The HF shape of a tensor whose shape here is `shape`."""
    if layout == TRANSPOSED:
        return shape[::-1]
    if layout == CONV:
        return (shape[0], 1, shape[1])
    return shape


_FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16"})
# Decoder parameters no HF checkpoint holds (`ModelConfig.value_head`): loaded as zeros.
_NON_HF_PARAMS = (("value_head",),)


def _ignorable(name: str, config: ModelConfig) -> bool:
    """Tensors a checkpoint may hold that the model rebuilds: rotary buffers, a tied head's copy."""
    return name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight")


def load_pretrained(path: str | Path, *, dtype: str | None = None, param_dtype: str | None = None,
                    mesh: Mesh | None = None, sharding_rules: ShardingRules | None = None,
                    allow_unexpected: bool = False,
                    config_overrides: Mapping[str, Any] | None = None) -> tuple[Decoder, ModelConfig]:
    """Loads a Qwen2/Qwen3/Llama/Qwen3-Next (dense) HF checkpoint directory into a `Decoder`.

    Args:
      path: directory with `config.json` and `model.safetensors` or `model.safetensors.index.json`.
      dtype: compute dtype (default float32).
      param_dtype: parameter dtype (default: `dtype`, else float32).
      allow_unexpected: ignore tensors the config has no place for (default: an error naming them;
        rotary `inv_freq` buffers and a tied model's `lm_head.weight` are always ignored).
      config_overrides: `ModelConfig` fields set over config.json's (runtime choices such as
        `attention_impl` or `remat`, or `value_head=True`: parameters HF checkpoints never hold, such
        as the critic's value head, start at zero).
      mesh: place each parameter as a sharded array on this mesh, using `sharding_rules`
        (default: `jaxrl_llm.parallel.rules.logical_to_sharding`, which raises on a dimension its
        mesh axes do not divide) on its logical axis names.
    Returns:
      `(model, config)`; `model(tokens [B, T], positions [B, T])` gives `(logits [B, T, V], None)`.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: a Hugging Face checkpoint folder holds config.json "
                                "and model.safetensors (or an index and shards)")
    try:
        hf_config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    overrides: dict[str, Any] = {"param_dtype": param_dtype or dtype or "float32"}
    if dtype is not None:
        overrides["dtype"] = dtype
    overrides.update(config_overrides or {})
    config = from_hf_config(hf_config, **overrides)
    sharding_for = None
    if mesh is not None and sharding_rules is not None:
        sharding_for = lambda axes, shape: sharding_rules(axes, mesh)  # noqa: E731
    elif mesh is not None:
        # The same shardings `parallel.init.init_sharded` gives a fresh model, and the same errors.
        sharding_for = lambda axes, shape: logical_to_sharding(axes, mesh, shape=shape)  # noqa: E731
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    flat = dict(nnx.to_flat_state(state))
    reader = CheckpointReader(path)
    expected = hf_tensor_names(config)
    unexpected = [n for n in reader.names() if n not in expected and not _ignorable(n, config)]
    if unexpected and not allow_unexpected:
        raise ValueError(f"checkpoint {path} holds {len(unexpected)} tensor(s) this config has no place for, e.g. "
                         f"{unexpected[:3]}; check config.json, or pass allow_unexpected=True to ignore them")
    for name, (state_path, layout) in expected.items():
        variable = flat[state_path]
        shape = tuple(variable.get_value().shape)
        want = hf_shape(shape, layout)
        if name not in reader:
            raise KeyError(f"checkpoint {path} is missing tensor {name!r} (expected shape {list(want)})")
        if reader.shape(name) != want:
            raise ValueError(f"tensor {name!r} in {path} has shape {list(reader.shape(name))}; "
                             f"expected {list(want)} from config.json")
        if reader.dtype(name) not in _FLOAT_TAGS:
            raise ValueError(f"tensor {name!r} in {path} is stored as {reader.dtype(name)}; weights must be "
                             f"floating point ({sorted(_FLOAT_TAGS)}): casting integers would change them silently")
        source = reader.array(name)
        if layout == CONV:
            source = source[:, 0, :]
        try:
            value = _materialise(source, layout == TRANSPOSED, shape, config.jnp_param_dtype,
                                 variable.get_metadata("out_sharding", None), sharding_for)
        except ValueError as err:  # a sharding rule that cannot apply: say which tensor
            raise ValueError(f"tensor {name!r}: {err}") from None
        flat[state_path] = variable.replace(value)
    for state_path in _NON_HF_PARAMS:
        if state_path in flat:  # zeros, as the decoder's own initialiser makes them
            variable = flat[state_path]
            shape = tuple(variable.get_value().shape)
            zeros = np.zeros(shape, config.jnp_param_dtype)
            flat[state_path] = variable.replace(_materialise(zeros, False, shape, config.jnp_param_dtype,
                                                             variable.get_metadata("out_sharding", None),
                                                             sharding_for))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    return model, config


def _materialise(source: np.ndarray, transposed: bool, shape: tuple[int, ...], dtype, axes,
                 sharding_for) -> jax.Array:
    """The `[in, out]`-layout array of `shape`: on the default device when `sharding_for` is None,
    else sharded as `sharding_for(logical axes, shape)`."""

    def read(index: tuple[slice, ...]) -> np.ndarray:
        # Slicing the memmap reads only the requested block; astype copies it off the file.
        block = source[index[::-1]].T if transposed else source[index]
        return np.ascontiguousarray(block.astype(dtype))

    full = tuple(slice(None) for _ in shape)
    if sharding_for is None:
        return jnp.asarray(read(full))
    sharding = sharding_for(tuple(axes) if axes is not None else (None,) * len(shape), shape)
    return jax.make_array_from_callback(shape, sharding, lambda index: read(tuple(index) + full[len(index):]))


def save_pretrained(model: Decoder, config: ModelConfig, path: str | Path, *, dtype: str | None = None) -> Path:
    """Writes `config.json` and `model.safetensors` that `transformers` loads as `config.architecture`.

    Stale weight files in `path` (an index and shards of an earlier sharded save) are removed; other
    files (a tokenizer, say) are kept.

    `dtype` sets the stored tensor dtype (default: `config.param_dtype`). LoRA weights are written
    merged (`LoraWeight.dequantize`: base + scale * a @ b). Sharded parameters are
    gathered to the host; on several processes, all must call this and process 0 writes.
    """
    from jax.experimental import multihost_utils  # noqa: PLC0415
    from safetensors.numpy import save_file  # noqa: PLC0415

    path = Path(path)
    out_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
    hf_config = to_hf_config(config)
    hf_config["torch_dtype"] = hf_config["dtype"] = str(out_dtype)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for name, (state_path, layout) in hf_tensor_names(config).items():
        value = flat[state_path].get_value()
        if isinstance(value, LoraWeight):  # LoRA: the merged weight base + scale * a @ b
            value = value.dequantize()
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        host = np.asarray(jax.device_get(value)).astype(out_dtype)
        host = host.T if layout == TRANSPOSED else host.reshape(hf_shape(host.shape, layout))
        tensors[name] = np.ascontiguousarray(host)
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
        # Weights this call did not write would be read instead of (an index) or beside (shards) ours.
        for stale in [path / INDEX_FILE, *path.glob("*.safetensors")]:
            if stale.name != SINGLE_FILE and stale.exists():
                stale.unlink()
        tmp = path / (SINGLE_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / SINGLE_FILE)  # a crash mid-write never leaves a half file under the real name
        (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    return path
