"""`Decoder`: embedding, a stack of `DecoderLayer`s, final RMSNorm and the lm_head."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.models.attention import MixerContext
from jaxrl_llm.models.cache import DecoderCache, write_slots
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.layers import DecoderLayer, mixer_spec
from jaxrl_llm.models.linear import embedding_lookup, linear, weight_as
from jaxrl_llm.models.norm import RMSNorm
from jaxrl_llm.models.params import constant_param, normal_param
from jaxrl_llm.models.rope import inverse_frequencies, rope_tables
from jaxrl_llm.parallel.activations import RESIDUAL, constrain
from jaxrl_llm.quant import QuantArray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TransposedWeight:
    """A quantized `[V, D]` table used as a `[D, V]` weight (the tied lm_head).

    A `QuantArray` keeps its scales along its own `[in, out]` layout, so it cannot be transposed
    in place; `dequantize` transposes after dequantizing, which is what `linear` / `weight_as` call.
    """

    table: Any

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.table.shape
        return (cols, rows)

    @property
    def ndim(self) -> int:
        return 2

    def dequantize(self, dtype=None) -> jax.Array:
        """`[D, V]` array in `dtype` (default: the table's original dtype)."""
        return weight_as(self.table, dtype or self.table.dtype).T


# An embedding table inside the forward: vocab rows stay split, the model dimension is whole.
TABLE_ROWS = ("vocab", None)


def embedding_rows(table: Any, tokens: jax.Array, dtype) -> jax.Array:
    """Rows of `table [V, D]` (plain or `QuantArray`) at `tokens [B, T]` -> `[B, T, D]` in `dtype`.

    A quantized table is gathered code row by code row, each times its group's scale, so only the
    B * T looked-up rows are ever dequantized. On a mesh the table's model dimension is gathered
    first (as FSDP does for every weight): rows gathered from a D-sharded table come out D-sharded,
    and XLA can only turn that into the batch-sharded residual stream by replicating it.
    """
    if not isinstance(table, QuantArray):
        return embedding_lookup(constrain(table, TABLE_ROWS), tokens, dtype)
    codes = jnp.take(constrain(table.values, TABLE_ROWS), tokens, axis=0).astype(jnp.float32)
    scales = jnp.take(constrain(table.scale, TABLE_ROWS), tokens // table.group_size, axis=0)
    return (codes * scales).astype(dtype)


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> DecoderCache:
    """An empty cache of `max_len` slots for `batch_size` rows; `dtype` defaults to `config.dtype`."""
    dtype = jnp.dtype(dtype or config.dtype)
    layers = tuple(mixer_spec(t).init_cache(config, batch_size, max_len, dtype)
                   for t in config.resolved_layer_types)
    return DecoderCache(layers=layers, segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
                        index=jnp.zeros((), jnp.int32))


class Decoder(nnx.Module):
    """A causal decoder (Qwen2/Qwen3/Llama-3 family, optionally with other mixer layer types).

    Call: `model(tokens [B, T] int32, positions [B, T] int32, *, segment_ids [B, T] | None,
    cache | None, return_hidden=False, return_logits=True)` -> `(logits [B, T, V] float32,
    new_cache)`, plus `hidden [B, T, D]` (after the final norm) when `return_hidden`. Segment id 0
    marks padding; tokens attend only to earlier tokens of their own non-zero segment.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = config.jnp_param_dtype
        self.embed = normal_param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(config, t, rngs=rngs) for t in config.resolved_layer_types])
        self.final_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=pd,
                                  zero_centered=config.norm_zero_centered)
        if not config.tie_word_embeddings:
            self.lm_head = normal_param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), pd)
        if config.value_head:
            # Zero init: the critic starts at V = 0 and its first updates do not disturb the policy.
            self.value_head = constant_param(0.0, (config.hidden_size, 1), ("embed", None), pd)

    def lm_head_weight(self) -> Any:
        """`[D, V]`: the lm_head, or the embedding transposed when embeddings are tied (a quantized
        embedding comes back as a `TransposedWeight`, which `linear` dequantizes)."""
        if self.config.tie_word_embeddings:
            embed = self.embed.get_value()
            if isinstance(embed, QuantArray) or hasattr(embed, "dequantize"):
                return TransposedWeight(embed)
            return embed.T
        return self.lm_head.get_value()

    def value(self, hidden: jax.Array) -> jax.Array:
        """`hidden [B, T, D]` -> critic values `[B, T]` float32 (needs `config.value_head`)."""
        if not self.config.value_head:
            raise ValueError("this decoder has no value head; build it with ModelConfig(value_head=True)")
        return linear(hidden, self.value_head.get_value(), out_dtype=jnp.float32)[..., 0]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """`hidden [B, T, D]` -> `logits [B, T, V]` float32."""
        return linear(hidden, self.lm_head_weight(), out_dtype=jnp.float32)

    def hidden(self, tokens: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None,
               cache: DecoderCache | None = None) -> tuple[jax.Array, DecoderCache | None]:
        """Final-norm hidden states `[B, T, D]` (compute dtype) and the updated cache; no lm_head."""
        segment_ids = _check_inputs(tokens, positions, segment_ids, cache)
        t = tokens.shape[1]
        if cache is None:
            q_slots = k_slots = jnp.arange(t, dtype=jnp.int32)
            k_segments, index = segment_ids, None
        else:
            index = cache.index
            slot_segments = k_segments = write_slots(cache.segment_ids, segment_ids, index)
            q_slots = index + jnp.arange(t, dtype=jnp.int32)
            k_slots = jnp.arange(cache.max_len, dtype=jnp.int32)
        c = self.config
        cos, sin = rope_tables(positions, inverse_frequencies(c.rotary_dim, c.rope_theta, c.rope_scaling))
        # The [B, T, S] mask is left to the attention kernel (`MixerContext.mask`), built only if needed.
        ctx = MixerContext(positions=positions, segment_ids=segment_ids, q_slots=q_slots,
                           k_segment_ids=k_segments, k_slots=k_slots, cos=cos, sin=sin, cache_index=index)
        # The residual stream stays batch-sharded at layer boundaries (see parallel/activations.py).
        x = constrain(embedding_rows(self.embed.get_value(), tokens, self.config.jnp_dtype), RESIDUAL)
        new_layers = []
        run_layer = remat_layer(c.remat)
        for i, layer in enumerate(self.layers):
            x, layer_cache = run_layer(layer, x, ctx, None if cache is None else cache.layers[i])
            x = constrain(x, RESIDUAL)
            new_layers.append(layer_cache)
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, DecoderCache(layers=tuple(new_layers), segment_ids=slot_segments, index=index + t)

    def __call__(self, tokens: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None,
                 cache: DecoderCache | None = None, return_hidden: bool = False, return_logits: bool = True):
        """See the class docstring; `return_logits=False` skips the lm_head (logits is None)."""
        hidden, new_cache = self.hidden(tokens, positions, segment_ids=segment_ids, cache=cache)
        logits = self.logits(hidden) if return_logits else None
        if return_hidden:
            return logits, new_cache, hidden
        return logits, new_cache


def _call_layer(layer: DecoderLayer, x: jax.Array, ctx: MixerContext, layer_cache: Any):
    return layer(x, ctx, layer_cache)


def remat_layer(remat: str):
    """`f(layer, x [B, T, D], ctx, layer_cache) -> (x, layer_cache)` under `ModelConfig.remat`'s policy.

    "none" calls the layer; "dots" and "full" run it under `jax.checkpoint`, so the backward
    recomputes the layer from its input, saving the outputs of dots without batch dimensions (the
    weight matmuls, not the attention scores) for "dots" and nothing for "full". The layer goes in
    split (graphdef + state) and is merged inside, so it works at any trace level (a decode
    `while_loop` body included); layers do not update their state in the forward.
    """
    if remat == "none":
        return _call_layer
    policies = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                "full": jax.checkpoint_policies.nothing_saveable}
    if remat not in policies:
        raise ValueError(f"ModelConfig.remat must be one of ('none', {', '.join(map(repr, policies))}); "
                         f"got {remat!r}")

    def run(layer: DecoderLayer, x: jax.Array, ctx: MixerContext, layer_cache: Any):
        graphdef, state = nnx.split(layer)

        def pure(state, x, ctx, layer_cache):
            return _call_layer(nnx.merge(graphdef, state), x, ctx, layer_cache)

        return jax.checkpoint(pure, policy=policies[remat])(state, x, ctx, layer_cache)

    return run


def _check_inputs(tokens, positions, segment_ids, cache) -> jax.Array:
    """Validates shapes and dtypes; returns segment_ids (all ones when None)."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be [B, T] integers; got shape {tokens.shape} dtype {tokens.dtype}")
    if positions.shape != tokens.shape or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"positions must be [B, T] = {tokens.shape} integers; "
                         f"got shape {positions.shape} dtype {positions.dtype}")
    if segment_ids is None:
        segment_ids = jnp.ones(tokens.shape, jnp.int32)
    elif segment_ids.shape != tokens.shape:
        raise ValueError(f"segment_ids must be [B, T] = {tokens.shape}; got {segment_ids.shape}")
    if cache is not None:
        if cache.batch_size != tokens.shape[0]:
            raise ValueError(f"cache batch size {cache.batch_size} does not match tokens [B, T] = {tokens.shape}")
        if tokens.shape[1] > cache.max_len:
            raise ValueError(f"tokens length {tokens.shape[1]} exceeds cache max_len {cache.max_len}")
    return segment_ids.astype(jnp.int32)
