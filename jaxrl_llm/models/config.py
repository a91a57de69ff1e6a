"""`ModelConfig`: the shape and numerics of a decoder, and its Hugging Face `config.json` mapping.

Supported Hugging Face architectures: `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `LlamaForCausalLM`.
Qwen2 always has q/k/v biases; Qwen3 adds per-head RMSNorm on q and k (`qk_norm`); Llama 3 may use
the `llama3` RoPE frequency scaling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ATTENTION = "attention"
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
_MODEL_TYPE_TO_ARCH = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
_ARCH_TO_MODEL_TYPE = {v: k for k, v in _MODEL_TYPE_TO_ARCH.items()}
_DTYPES = ("float32", "bfloat16", "float16")
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder hyperparameters.

    Attributes:
      vocab_size: V, rows of the embedding table.
      hidden_size: D, the residual-stream width.
      intermediate_size: F, the SwiGLU hidden width.
      num_layers: L.
      num_heads: H, query heads.
      num_kv_heads: KVH, key/value heads (grouped-query attention when KVH < H; H % KVH == 0).
      head_dim: Dh (may differ from D // H, as in Qwen3).
      rope_theta: RoPE base frequency.
      rope_scaling: None or a llama3 dict with `factor`, `low_freq_factor`, `high_freq_factor`,
        `original_max_position_embeddings`.
      rms_norm_eps: epsilon inside every RMSNorm.
      tie_word_embeddings: the lm_head is the transposed embedding table.
      attention_bias: q/k/v projections carry biases (Qwen2/2.5).
      qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
      max_position_embeddings: the longest context the checkpoint was trained for (informational).
      param_dtype: storage dtype of parameters ("float32" or "bfloat16").
      dtype: compute dtype of activations and matmuls; softmax and norms always run in float32.
      layer_types: one mixer name per layer (default: all "attention"); see `models.layers`.
      architecture: the Hugging Face architecture name written by `to_hf_config`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"
    dtype: str = "float32"
    layer_types: tuple[str, ...] | None = None
    architecture: str = "Qwen2ForCausalLM"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int; got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE; got {self.head_dim}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name} must be one of {_DTYPES}; got {getattr(self, name)!r}")
        if self.rope_scaling is not None:
            missing = [k for k in _LLAMA3_ROPE_KEYS if k not in self.rope_scaling]
            if missing:
                raise ValueError(
                    f"ModelConfig.rope_scaling must be a llama3 dict with keys {_LLAMA3_ROPE_KEYS}; "
                    f"missing {missing}")
            # A frozen dataclass must stay hashable (it is a static jit argument): store items sorted.
            object.__setattr__(self, "rope_scaling", _FrozenDict(self.rope_scaling))
        if self.layer_types is not None:
            types = tuple(self.layer_types)
            if len(types) != self.num_layers:
                raise ValueError(
                    f"ModelConfig.layer_types must have num_layers={self.num_layers} entries; got {len(types)}")
            object.__setattr__(self, "layer_types", types)
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(_unsupported(self.architecture))

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        """One mixer name per layer, `("attention",) * num_layers` when `layer_types` is None."""
        return self.layer_types if self.layer_types is not None else (ATTENTION,) * self.num_layers

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with `changes` applied (e.g. `config.replace(dtype="bfloat16")`)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> "ModelConfig":
        """Builds a config from a Hugging Face `config.json` dict (transformers 4.x or 5.x layout).

        `overrides` (e.g. `param_dtype="bfloat16"`) replace fields after conversion.
        """
        arch = _architecture_of(hf)
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act must be 'silu' for {arch}; got {hf['hidden_act']!r}")
        if hf.get("mlp_bias", False):
            raise ValueError(f"mlp_bias=True is not supported ({arch})")
        if hf.get("use_sliding_window", False):
            raise ValueError(f"use_sliding_window=True is not supported ({arch})")
        if arch != "Qwen2ForCausalLM" and hf.get("attention_bias", False):
            raise ValueError(f"attention_bias=True (which also biases o_proj) is not supported for {arch}")
        rope_theta, rope_scaling = _rope_from_hf(hf)
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM",
            qk_norm=arch == "Qwen3ForCausalLM",
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            architecture=arch,
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` dict that `transformers.AutoConfig` reads back into this model."""
        if set(self.resolved_layer_types) != {ATTENTION}:
            raise ValueError(
                f"to_hf_config: only all-attention models map to {self.architecture}; "
                f"layer_types={self.layer_types}")
        if self.architecture == "Qwen2ForCausalLM" and not self.attention_bias:
            raise ValueError("Qwen2ForCausalLM always has q/k/v biases; set attention_bias=True")
        if self.architecture != "Qwen2ForCausalLM" and self.attention_bias:
            raise ValueError(f"{self.architecture} with attention_bias also biases o_proj; not supported")
        if self.qk_norm != (self.architecture == "Qwen3ForCausalLM"):
            raise ValueError(f"qk_norm={self.qk_norm} does not match {self.architecture}")
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling is not None:
            rope.update({k: self.rope_scaling[k] for k in _LLAMA3_ROPE_KEYS}, rope_type="llama3")
        hf: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": _ARCH_TO_MODEL_TYPE[self.architecture],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope,
            # transformers 4.x reads these two instead of rope_parameters.
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dict(rope),
            "torch_dtype": self.param_dtype,
        }
        if self.architecture != "Qwen2ForCausalLM":
            hf["attention_bias"] = False
        return hf


class _FrozenDict(dict):
    """A dict that hashes by its items, so that `ModelConfig` stays hashable."""

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def _unsupported(arch: Any) -> str:
    return f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"


def _architecture_of(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or []
    if archs:
        arch = archs[0]
    else:
        arch = _MODEL_TYPE_TO_ARCH.get(hf.get("model_type"), hf.get("model_type"))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(_unsupported(arch))
    return arch


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, float] | None]:
    """(rope_theta, llama3 scaling or None) from `rope_parameters` (5.x) or `rope_scaling` (4.x)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"rope_type must be 'default' or 'llama3'; got {rope_type!r}")
    return theta, {k: float(params[k]) if k != "original_max_position_embeddings" else int(params[k])
                   for k in _LLAMA3_ROPE_KEYS}


def tiny(**overrides: Any) -> ModelConfig:
    """A 2-layer, 64-wide GQA model (V=128) for tests and synthetic tasks."""
    fields = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, attention_bias=True,
                  max_position_embeddings=512)
    fields.update(overrides)
    return ModelConfig(**fields)


def qwen25_05b(**overrides: Any) -> ModelConfig:
    """Qwen2.5-0.5B shapes (494M parameters, tied embeddings) for benchmarks."""
    fields = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                  num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, attention_bias=True, max_position_embeddings=32768,
                  param_dtype="bfloat16", dtype="bfloat16")
    fields.update(overrides)
    return ModelConfig(**fields)


PRESETS = {"tiny": tiny, "qwen2.5-0.5b": qwen25_05b}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (`tiny`, `qwen2.5-0.5b`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
