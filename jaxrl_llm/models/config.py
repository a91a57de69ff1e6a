"""`ModelConfig`: the shape and numerics of a decoder, and its presets.

Conversion to and from a Hugging Face `config.json` lives in `models.hf_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxrl_llm.models.attention_kernels import IMPLS as ATTENTION_IMPLS

ATTENTION = "attention"
QWEN3_NEXT = "Qwen3NextForCausalLM"
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", QWEN3_NEXT)
_DTYPES = ("float32", "bfloat16", "float16")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# The kernels' implementations (`jaxrl_llm.kernels.delta_rule.IMPLS`), repeated so that configs stay
# importable without the kernels.
DELTA_IMPLS = ("recurrent", "chunked", "pallas", "auto")
# Per-layer rematerialisation (`ModelConfig.remat`): nothing, everything but the dots without batch
# dimensions (the weight matmuls), or everything recomputed in the backward.
REMAT_POLICIES = ("none", "dots", "full")


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
      architecture: the Hugging Face architecture name (`hf_config.to_hf_config` writes it).
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
      attention_impl: softmax attention kernel: "auto" (by backend and size, see
        `attention_kernels.resolve_attention_impl`), "reference", "blockwise", "cudnn" or "splash".
      attention_block: query / key block size of the blockwise and splash kernels.
      remat: per-layer `jax.checkpoint` in the backward: "none", "dots" (save the weight matmuls'
        outputs, recompute the rest) or "full" (save only each layer's input).
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
    attention_impl: str = "auto"
    attention_block: int = 512
    remat: str = "none"

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
        self._check_attention_fields()
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name} must be one of {_DTYPES}; got {getattr(self, name)!r}")
        if self.rope_scaling is not None:
            missing = [k for k in LLAMA3_ROPE_KEYS if k not in self.rope_scaling]
            if missing:
                raise ValueError(
                    f"ModelConfig.rope_scaling must be a llama3 dict with keys {LLAMA3_ROPE_KEYS}; "
                    f"missing {missing}")
            # A frozen dataclass must stay hashable (it is a static jit argument): store items sorted.
            object.__setattr__(self, "rope_scaling", _FrozenDict(self.rope_scaling))
        if self.layer_types is not None:
            types = tuple(self.layer_types)
            if len(types) != self.num_layers:
                raise ValueError(
                    f"ModelConfig.layer_types must have num_layers={self.num_layers} entries; got {len(types)}")
            object.__setattr__(self, "layer_types", types)
        check_architecture(self.architecture)

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

    def _check_attention_fields(self) -> None:
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention_impl must be one of {ATTENTION_IMPLS}; "
                             f"got {self.attention_impl!r}")
        block = self.attention_block
        if not isinstance(block, int) or isinstance(block, bool) or block <= 0:
            raise ValueError(f"ModelConfig.attention_block must be a positive int; got {block!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat must be one of {REMAT_POLICIES}; got {self.remat!r}")

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


class _FrozenDict(dict):
    """A dict that hashes by its items, so that `ModelConfig` stays hashable."""

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def check_architecture(arch: Any) -> str:
    """`arch` if it is one of `SUPPORTED_ARCHITECTURES`; otherwise a `ValueError` listing them."""
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


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


def _qwen25(**fields: Any) -> ModelConfig:
    """Qwen2.5 family: q/k/v biases, RoPE theta 1e6, bf16 storage and compute."""
    base = dict(rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=True, max_position_embeddings=32768,
                param_dtype="bfloat16", dtype="bfloat16")
    return ModelConfig(**{**base, **fields})


def qwen25_15b(**overrides: Any) -> ModelConfig:
    """Qwen2.5-1.5B shapes (1.54B parameters, tied embeddings)."""
    return _qwen25(**{**dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                             num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=True), **overrides})


def qwen25_7b(**overrides: Any) -> ModelConfig:
    """Qwen2.5-7B shapes (7.62B parameters, separate lm_head, V=152064)."""
    return _qwen25(**{**dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                             num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False,
                             max_position_embeddings=131072), **overrides})


def _qwen3(**fields: Any) -> ModelConfig:
    """Qwen3 family: q/k RMSNorm, no biases, head_dim 128, RoPE theta 1e6, bf16."""
    base = dict(vocab_size=151936, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6, qk_norm=True,
                max_position_embeddings=40960, architecture="Qwen3ForCausalLM", param_dtype="bfloat16",
                dtype="bfloat16")
    return ModelConfig(**{**base, **fields})


def qwen3_06b(**overrides: Any) -> ModelConfig:
    """Qwen3-0.6B shapes (596M parameters, tied embeddings)."""
    return _qwen3(**{**dict(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16, num_kv_heads=8,
                            tie_word_embeddings=True), **overrides})


def qwen3_8b(**overrides: Any) -> ModelConfig:
    """Qwen3-8B shapes (8.19B parameters, separate lm_head)."""
    return _qwen3(**{**dict(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
                            tie_word_embeddings=False), **overrides})


def llama31_8b(**overrides: Any) -> ModelConfig:
    """Llama-3.1-8B shapes (8.03B parameters, llama3 RoPE scaling to 128K, V=128256)."""
    fields = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                  num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
                  rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192},
                  max_position_embeddings=131072, architecture="LlamaForCausalLM", param_dtype="bfloat16",
                  dtype="bfloat16")
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


def hybrid_3_7b(**overrides: Any) -> ModelConfig:
    """Qwen3-Next-80B-A3B's layout with a dense MLP: 3.67B parameters.

    48 layers (3 Gated DeltaNet : 1 gated attention), D=2048, attention 16 x 256 heads over 2 KV heads
    with quarter rotary, delta rule 16 q/k heads and 32 value heads of 128, V=151936, untied. Each
    sparse MoE block is replaced by one SwiGLU MLP of the checkpoint's `intermediate_size` (5120),
    since only dense Qwen3-Next layers are supported; the nearest dense hybrid at a real model size.
    """
    num_layers = overrides.pop("num_layers", 48)
    fields = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5120, num_layers=num_layers, num_heads=16,
                  num_kv_heads=2, head_dim=256, rope_theta=10000000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=262144, layer_types=hybrid_layer_types(num_layers), qk_norm=True,
                  attention_output_gate=True, norm_zero_centered=True, partial_rotary_factor=0.25,
                  linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                  linear_value_head_dim=128, linear_conv_kernel_dim=4, architecture=QWEN3_NEXT,
                  param_dtype="bfloat16", dtype="bfloat16")
    fields.update(overrides)
    return ModelConfig(**fields)


PRESETS = {"tiny": tiny, "qwen2.5-0.5b": qwen25_05b, "qwen2.5-1.5b": qwen25_15b, "qwen2.5-7b": qwen25_7b,
           "qwen3-0.6b": qwen3_06b, "qwen3-8b": qwen3_8b, "llama3.1-8b": llama31_8b, "hybrid-tiny": hybrid_tiny,
           "hybrid-3.7b": hybrid_3_7b}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (see `PRESETS`: `tiny`, `hybrid-tiny`, and real model shapes such as `qwen2.5-7b`,
    `qwen3-8b`, `llama3.1-8b`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
