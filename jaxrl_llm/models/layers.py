"""Decoder layers, built through a registry of token mixers keyed by layer type.

A mixer is an `nnx.Module` called as `mixer(x [B, T, D], ctx: MixerContext, layer_cache)` that
returns `(y [B, T, D], new_layer_cache)` (`layer_cache` is None without a cache). Each layer type
registers how to build its mixer and how to make its empty cache entry. `"attention"` and the
delta-rule types of `models.hybrid` are registered here; users add theirs with `register_mixer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from jaxrl_llm.models import hybrid
from jaxrl_llm.models.attention import Attention, MixerContext
from jaxrl_llm.models.cache import init_kv_cache
from jaxrl_llm.models.config import ATTENTION, ModelConfig
from jaxrl_llm.models.mlp import SwiGLU
from jaxrl_llm.models.norm import RMSNorm

@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """build(config, rngs) -> mixer module; init_cache(config, batch_size, max_len, dtype) -> entry."""

    build: Callable[[ModelConfig, nnx.Rngs], nnx.Module]
    init_cache: Callable[[ModelConfig, int, int, Any], Any]


_MIXERS: dict[str, MixerSpec] = {}


def register_mixer(layer_type: str, build: Callable[[ModelConfig, nnx.Rngs], nnx.Module],
                   init_cache: Callable[[ModelConfig, int, int, Any], Any]) -> None:
    """Makes `layer_type` usable in `ModelConfig.layer_types`."""
    _MIXERS[layer_type] = MixerSpec(build, init_cache)


def mixer_spec(layer_type: str) -> MixerSpec:
    """The registered spec of `layer_type`."""
    if layer_type not in _MIXERS:
        raise ValueError(f"unknown layer type {layer_type!r} in ModelConfig.layer_types; "
                         f"registered: {sorted(_MIXERS)}")
    return _MIXERS[layer_type]


register_mixer(ATTENTION, lambda config, rngs: Attention(config, rngs=rngs), init_kv_cache)
for _layer_type in hybrid.DELTA_LAYER_TYPES:
    register_mixer(_layer_type, lambda config, rngs, t=_layer_type: hybrid.DeltaMixer(config, t, rngs=rngs),
                   hybrid.init_delta_cache)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: `x + mixer(norm(x))`, then `x + mlp(norm(x))`."""

    def __init__(self, config: ModelConfig, layer_type: str, *, rngs: nnx.Rngs):
        norm = dict(eps=config.rms_norm_eps, param_dtype=config.jnp_param_dtype,
                    zero_centered=config.norm_zero_centered)
        self.layer_type = layer_type
        self.input_norm = RMSNorm(config.hidden_size, **norm)
        self.mixer = mixer_spec(layer_type).build(config, rngs)
        self.post_mixer_norm = RMSNorm(config.hidden_size, **norm)
        self.mlp = SwiGLU(config, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: MixerContext, cache: Any):
        """x `[B, T, D]` -> (`[B, T, D]`, new layer cache)."""
        mixed, cache = self.mixer(self.input_norm(x), ctx, cache)
        x = x + mixed
        x = x + self.mlp(self.post_mixer_norm(x))
        return x, cache
