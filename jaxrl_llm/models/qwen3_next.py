"""Qwen3-Next (`Qwen3NextForCausalLM`) `config.json` <-> `ModelConfig` fields, for `models.hf_config`.

A Qwen3-Next decoder is a hybrid: `linear_attention` layers are Gated DeltaNet mixers (our
`"gated_deltanet"` layer type) and `full_attention` layers are softmax attention with q/k RMSNorm, a
sigmoid output gate folded into `q_proj` and RoPE on the first `partial_rotary_factor` of each head.
Every RMSNorm outside the delta-rule output norm stores a zero-centred weight (applied as `1 + w`).
Only dense checkpoints are supported: a layer that Hugging Face would build as a sparse MoE block
fails the conversion.
"""

from __future__ import annotations

from typing import Any

from jaxrl_llm.models.config import ATTENTION, ModelConfig

GATED_DELTANET = "gated_deltanet"
# Hugging Face `layer_types` entry -> our layer type.
HF_LAYER_TYPES = {"linear_attention": GATED_DELTANET, "full_attention": ATTENTION}
_OUR_LAYER_TYPES = {v: k for k, v in HF_LAYER_TYPES.items()}
# `Qwen3NextConfig` defaults, used for keys a `config.json` leaves out.
HF_DEFAULTS = {"head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
               "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
               "partial_rotary_factor": 0.25, "full_attention_interval": 4, "num_experts": 512,
               "decoder_sparse_step": 1}


def hf_layer_types(hf: dict[str, Any]) -> list[str]:
    """The per-layer HF types: `layer_types`, else every `full_attention_interval`-th layer attends."""
    num_layers = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        interval = hf.get("full_attention_interval", HF_DEFAULTS["full_attention_interval"])
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)]
    if len(types) != num_layers:
        raise ValueError(f"layer_types has {len(types)} entries; num_hidden_layers is {num_layers}")
    unknown = sorted(set(types) - set(HF_LAYER_TYPES))
    if unknown:
        raise ValueError(f"Qwen3NextForCausalLM layer_types {unknown} are not supported; "
                         f"known: {sorted(HF_LAYER_TYPES)}")
    return list(types)


def sparse_moe_layers(hf: dict[str, Any]) -> list[int]:
    """Indices of the layers Hugging Face builds as sparse MoE blocks (its own rule)."""
    num_experts = hf.get("num_experts", HF_DEFAULTS["num_experts"])
    step = hf.get("decoder_sparse_step", HF_DEFAULTS["decoder_sparse_step"])
    dense = set(hf.get("mlp_only_layers") or [])
    return [i for i in range(hf["num_hidden_layers"])
            if i not in dense and num_experts > 0 and (i + 1) % step == 0]


def fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """The `ModelConfig` fields specific to a Qwen3-Next `config.json` (dense MLP only)."""
    sparse = sparse_moe_layers(hf)
    if sparse:
        raise ValueError(
            f"Qwen3NextForCausalLM: layers {sparse} are sparse mixture-of-experts blocks, which are not "
            f"supported; only dense checkpoints load (num_experts=0, or every layer in mlp_only_layers)")
    rope = hf.get("rope_parameters") or {}
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", HF_DEFAULTS["partial_rotary_factor"]))
    fields: dict[str, Any] = {
        name: int(hf.get(name, HF_DEFAULTS[name]))
        for name in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_conv_kernel_dim")
    }
    fields.update(
        head_dim=int(hf.get("head_dim") or HF_DEFAULTS["head_dim"]),
        layer_types=tuple(HF_LAYER_TYPES[t] for t in hf_layer_types(hf)),
        partial_rotary_factor=float(partial),
        qk_norm=True,
        attention_output_gate=True,
        norm_zero_centered=True,
        attention_bias=False,
    )
    return fields


def extend_hf_config(config: ModelConfig, common: dict[str, Any]) -> dict[str, Any]:
    """`common` (the entries every architecture shares) plus Qwen3-Next's, for a dense checkpoint."""
    layer_types = config.resolved_layer_types
    unknown = sorted(set(layer_types) - set(_OUR_LAYER_TYPES))
    if unknown:
        raise ValueError(f"to_hf_config: Qwen3NextForCausalLM has only {sorted(_OUR_LAYER_TYPES)} layers; "
                         f"got {unknown}")
    required = {"qk_norm": True, "attention_output_gate": True, "norm_zero_centered": True, "attention_bias": False}
    wrong = {k: getattr(config, k) for k, v in required.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(f"to_hf_config: Qwen3NextForCausalLM needs {required}; got {wrong}")
    hf = dict(common)
    hf["rope_parameters"] = dict(common["rope_parameters"], partial_rotary_factor=config.partial_rotary_factor)
    hf.update(
        attention_bias=False,
        partial_rotary_factor=config.partial_rotary_factor,
        layer_types=[_OUR_LAYER_TYPES[t] for t in layer_types],
        linear_num_key_heads=config.linear_num_key_heads,
        linear_num_value_heads=config.linear_num_value_heads,
        linear_key_head_dim=config.linear_key_head_dim,
        linear_value_head_dim=config.linear_value_head_dim,
        linear_conv_kernel_dim=config.linear_conv_kernel_dim,
        # Dense MLPs everywhere: transformers honours both switches.
        num_experts=0,
        mlp_only_layers=list(range(config.num_layers)),
    )
    return hf
