"""Hugging Face `config.json` <-> `ModelConfig`.

Supported architectures: `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `LlamaForCausalLM`,
`Qwen3NextForCausalLM` (dense MLP only). Qwen2 always has q/k/v biases; Qwen3 adds per-head RMSNorm
on q and k (`qk_norm`); Llama 3 may use the `llama3` RoPE frequency scaling. Qwen3-Next's own
fields are converted by `models.qwen3_next`. Both transformers layouts are read: 4.x
(`rope_theta` / `rope_scaling`) and 5.x (`rope_parameters`); both are written.
"""

from __future__ import annotations

from typing import Any

from jaxrl_llm.models import qwen3_next
from jaxrl_llm.models.config import (ATTENTION, LLAMA3_ROPE_KEYS, QWEN3_NEXT, ModelConfig,
                                     check_architecture)

MODEL_TYPE_TO_ARCH = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3_next": QWEN3_NEXT,
}
ARCH_TO_MODEL_TYPE = {v: k for k, v in MODEL_TYPE_TO_ARCH.items()}


def from_hf_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """A `ModelConfig` from a Hugging Face `config.json` dict (transformers 4.x or 5.x layout).

    `overrides` (e.g. `param_dtype="bfloat16"`) replace fields after conversion. Features the
    decoder lacks (another activation, MLP biases, sliding windows, an o_proj bias) fail naming them.
    """
    arch = architecture_of(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act must be 'silu' for {arch}; got {hf['hidden_act']!r}")
    if hf.get("mlp_bias", False):
        raise ValueError(f"mlp_bias=True is not supported ({arch})")
    if hf.get("use_sliding_window", False):
        raise ValueError(f"use_sliding_window=True is not supported ({arch})")
    if arch != "Qwen2ForCausalLM" and hf.get("attention_bias", False):
        raise ValueError(f"attention_bias=True (which also biases o_proj) is not supported for {arch}")
    rope_theta, rope_scaling = rope_from_hf(hf)
    num_heads = hf["num_attention_heads"]
    fields = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=arch == "Qwen2ForCausalLM",
        qk_norm=arch == "Qwen3ForCausalLM",
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        architecture=arch,
    )
    if arch == QWEN3_NEXT:
        fields.update(qwen3_next.fields_from_hf(hf))
    fields.update(overrides)
    return ModelConfig(**fields)


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` dict that `transformers.AutoConfig` reads back into `config`'s model.

    Raises `ValueError` naming the field when `config` has no counterpart in its `architecture`.
    """
    arch = config.architecture
    if arch == QWEN3_NEXT:
        return qwen3_next.extend_hf_config(config, hf_common(config))
    if set(config.resolved_layer_types) != {ATTENTION}:
        raise ValueError(f"to_hf_config: only all-attention models map to {arch}; "
                         f"layer_types={config.layer_types}")
    if arch == "Qwen2ForCausalLM" and not config.attention_bias:
        raise ValueError("Qwen2ForCausalLM always has q/k/v biases; set attention_bias=True")
    if arch != "Qwen2ForCausalLM" and config.attention_bias:
        raise ValueError(f"{arch} with attention_bias also biases o_proj; not supported")
    if config.qk_norm != (arch == "Qwen3ForCausalLM"):
        raise ValueError(f"qk_norm={config.qk_norm} does not match {arch}")
    for name in ("attention_output_gate", "norm_zero_centered"):
        if getattr(config, name):
            raise ValueError(f"{name}=True does not exist in {arch}")
    if config.partial_rotary_factor != 1.0:
        raise ValueError(f"partial_rotary_factor={config.partial_rotary_factor} does not exist in {arch}")
    hf = hf_common(config)
    if arch != "Qwen2ForCausalLM":
        hf["attention_bias"] = False
    return hf


def hf_common(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` entries every supported architecture shares."""
    rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if config.rope_scaling is not None:
        rope.update({k: config.rope_scaling[k] for k in LLAMA3_ROPE_KEYS}, rope_type="llama3")
    return {
        "architectures": [config.architecture],
        "model_type": ARCH_TO_MODEL_TYPE[config.architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": rope,
        # transformers 4.x reads these two instead of rope_parameters.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else dict(rope),
        "torch_dtype": config.param_dtype,
    }


def architecture_of(hf: dict[str, Any]) -> str:
    """The supported architecture named by `architectures[0]`, else by `model_type`."""
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else MODEL_TYPE_TO_ARCH.get(hf.get("model_type"), hf.get("model_type"))
    return check_architecture(arch)


def rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, float] | None]:
    """(rope_theta, llama3 scaling or None) from `rope_parameters` (5.x) or `rope_scaling` (4.x)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"rope_type must be 'default' or 'llama3'; got {rope_type!r}")
    return theta, {k: float(params[k]) if k != "original_max_position_embeddings" else int(params[k])
                   for k in LLAMA3_ROPE_KEYS}
