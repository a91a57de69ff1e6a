"""`ModelConfig`: the shape and numerics of a decoder, and its Hugging Face `config.json` mapping.

Supported Hugging Face architectures: `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `LlamaForCausalLM`,
`Qwen3NextForCausalLM` (dense MLP only). Qwen2 always has q/k/v biases; Qwen3 adds per-head RMSNorm
on q and k (`qk_norm`); Llama 3 may use the `llama3` RoPE frequency scaling; Qwen3-Next mixes Gated
DeltaNet layers with gated, partially rotary attention and uses zero-centred RMSNorm weights (its
conversion lives in `models.qwen3_next`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ATTENTION = "attention"
QWEN3_NEXT = "Qwen3NextForCausalLM"
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", QWEN3_NEXT)
_MODEL_TYPE_TO_ARCH = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3_next": QWEN3_NEXT,
}
_ARCH_TO_MODEL_TYPE = {v: k for k, v in _MODEL_TYPE_TO_ARCH.items()}
_DTYPES = ("float32", "bfloat16", "float16")
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# The kernels' implementations (`jaxrl_llm.kernels.delta_rule.IMPLS`), repeated so that configs stay
# importable without the kernels.
DELTA_IMPLS = ("recurrent", "chunked", "pallas", "auto")


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
      value_head: a `[D, 1]` value head (the RL critic) on the final hidden states; not part of HF
        checkpoints (never saved or loaded there).
      attention_bias: q/k/v projections carry biases (Qwen2/2.5).
      qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
      max_position_embeddings: the longest context the checkpoint was trained for (informational).
      param_dtype: storage dtype of parameters ("float32" or "bfloat16").
      dtype: compute dtype of activations and matmuls; softmax and norms always run in float32.
      layer_types: one mixer name per layer (default: all "attention"); see `models.layers` and,
        for the delta-rule types ("gated_deltanet", "kda", "fg2_gdn", "fg2_gdn_plus"), `models.hybrid`.
      architecture: the Hugging Face architecture name written by `to_hf_config`.
      partial_rotary_factor: fraction of each head's Dh channels that RoPE rotates (Qwen3-Next:
        0.25); `rotary_dim = int(head_dim * partial_rotary_factor)` must be even.
      attention_output_gate: q_proj also yields a per-head gate; attention output is multiplied by
        sigmoid(gate) before o_proj (Qwen3-Next).
      norm_zero_centered: RMSNorm weights are stored zero-centred and applied as `1 + weight`
        (Qwen3-Next), for the layer, final and q/k norms.
      linear_num_key_heads: delta-rule q/k heads (default: num_heads).
      linear_num_value_heads: delta-rule value heads, a multiple of linear_num_key_heads (default:
        linear_num_key_heads).
      linear_key_head_dim: delta-rule q/k head dim K (default: head_dim).
      linear_value_head_dim: delta-rule value head dim V (default: linear_key_head_dim).
      linear_conv_kernel_dim: width W of the depthwise causal conv before the delta rule.
      delta_impl: delta-rule kernel: "chunked", "recurrent", "pallas" or "auto".
      delta_chunk_size: chunk length C of the chunked / Pallas kernels.
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
    value_head: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"
    dtype: str = "float32"
    layer_types: tuple[str, ...] | None = None
    architecture: str = "Qwen2ForCausalLM"
    partial_rotary_factor: float = 1.0
    attention_output_gate: bool = False
    norm_zero_centered: bool = False
    linear_num_key_heads: int | None = None
    linear_num_value_heads: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_conv_kernel_dim: int = 4
    delta_impl: str = "auto"
    delta_chunk_size: int = 64

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
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ValueError(
                f"ModelConfig.partial_rotary_factor must be in (0, 1] with int(head_dim * factor) even and "
                f">= 2; got {self.partial_rotary_factor} (rotary_dim {self.rotary_dim}, head_dim {self.head_dim})")
        self._resolve_delta_fields()
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

    def _resolve_delta_fields(self) -> None:
        """Fills the delta-rule defaults (from the attention shapes) and validates them."""
        defaults = (("linear_num_key_heads", self.num_heads),
                    ("linear_num_value_heads", self.linear_num_key_heads or self.num_heads),
                    ("linear_key_head_dim", self.head_dim),
                    ("linear_value_head_dim", self.linear_key_head_dim or self.head_dim))
        for name, default in defaults:
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for name in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_conv_kernel_dim", "delta_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int; got {value!r}")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError(
                f"ModelConfig.linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of "
                f"linear_num_key_heads ({self.linear_num_key_heads})")
        if self.delta_impl not in DELTA_IMPLS:
            raise ValueError(f"ModelConfig.delta_impl must be one of {DELTA_IMPLS}; got {self.delta_impl!r}")

    @property
    def rotary_dim(self) -> int:
        """R, the channels of each attention head that RoPE rotates (`head_dim` unless partial)."""
        return int(self.head_dim * self.partial_rotary_factor)

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
        if arch == QWEN3_NEXT:
            from jaxrl_llm.models import qwen3_next  # noqa: PLC0415

            fields.update(qwen3_next.fields_from_hf(hf))
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` dict that `transformers.AutoConfig` reads back into this model."""
        if self.architecture == QWEN3_NEXT:
            from jaxrl_llm.models import qwen3_next  # noqa: PLC0415

            return qwen3_next.to_hf_config(self, self._hf_common())
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
        for name in ("attention_output_gate", "norm_zero_centered"):
            if getattr(self, name):
                raise ValueError(f"{name}=True does not exist in {self.architecture}")
        if self.partial_rotary_factor != 1.0:
            raise ValueError(
                f"partial_rotary_factor={self.partial_rotary_factor} does not exist in {self.architecture}")
        hf = self._hf_common()
        if self.architecture != "Qwen2ForCausalLM":
            hf["attention_bias"] = False
        return hf

    def _hf_common(self) -> dict[str, Any]:
        """The `config.json` entries every supported architecture shares."""
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


def hybrid_layer_types(num_layers: int, every: int = 4, mixer: str = "gated_deltanet") -> tuple[str, ...]:
    """`layer_types` with softmax attention at every `every`-th layer and `mixer` elsewhere.

    `hybrid_layer_types(8)` is Qwen3-Next's 3:1 pattern (layers 3 and 7 attend); `every=1` gives an
    all-attention stack.
    """
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_layers must be a positive int; got {num_layers!r}")
    if not isinstance(every, int) or every <= 0:
        raise ValueError(f"every must be a positive int; got {every!r}")
    return tuple(ATTENTION if (i + 1) % every == 0 else mixer for i in range(num_layers))


def hybrid_tiny(**overrides: Any) -> ModelConfig:
    """A 4-layer Qwen3-Next-shaped hybrid (3 Gated DeltaNet : 1 attention, D=64, V=128) for tests.

    Gated, half-rotary attention with q/k norm and zero-centred norms, so it saves as a
    `Qwen3NextForCausalLM` checkpoint. Other mixers: `layer_types=hybrid_layer_types(4, mixer="kda")`
    (such a model runs and trains here but has no Hugging Face counterpart to save to).
    """
    num_layers = overrides.pop("num_layers", 4)
    fields = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=num_layers, num_heads=4,
                  num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=512,
                  layer_types=hybrid_layer_types(num_layers), qk_norm=True, attention_output_gate=True,
                  norm_zero_centered=True, partial_rotary_factor=0.5, linear_num_key_heads=2,
                  linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                  delta_chunk_size=16, architecture=QWEN3_NEXT)
    fields.update(overrides)
    return ModelConfig(**fields)


PRESETS = {"tiny": tiny, "qwen2.5-0.5b": qwen25_05b, "hybrid-tiny": hybrid_tiny}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (`tiny`, `qwen2.5-0.5b`, `hybrid-tiny`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
