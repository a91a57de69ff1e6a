"""A serving engine with JetStream's `Engine` interface, for continuous batching.

The engine owns `max_concurrent_decodes` slots. A request is prefilled alone (`prefill`: one
right-padded prompt -> a batch-1 KV cache and its first token), copied into a free slot
(`insert`), and then advanced one token per `generate` call together with every other live slot.
Each slot keeps its own cache write index, RoPE position, PRNG key and token count, so requests
of different lengths join and leave independently; `generate` runs the batch sampler's
`decode.decode_step` `vmap`ped over the slot axis with one batch-1 cache per slot, and `prefill`
its `decode.prefill_step` on the right-padded layout of `prompts.right_padded_layout`.

A request's draws depend only on its own key (`key` of `prefill`, folded with the token index),
never on which slot it lands in or what else is running: interleaved serving reproduces serving
alone.

The interface follows `jetstream.engine.engine_api.Engine` (`load_params`, `init_decode_state`,
`prefill`, `insert`, `generate`, `max_concurrent_decodes`, `max_prefill_length`,
`samples_per_slot`); `EngineAPI` states it as a `Protocol`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.decoder import Decoder, init_cache
from jaxrl_llm.models.lora import merge_lora
from jaxrl_llm.quant import quantize_params
from jaxrl_llm.rollout.decode import decode_step, prefill_step
from jaxrl_llm.rollout.prompts import right_padded_layout
from jaxrl_llm.rollout.sampling import SamplingKnobs, as_prng_key

_NO_STOP = -1


@runtime_checkable
class EngineAPI(Protocol):
    """What a serving loop needs from an engine (JetStream's `Engine` methods of the same names)."""

    def load_params(self, *args, **kwargs) -> Any: ...

    def init_decode_state(self, *args, **kwargs) -> Any: ...

    def prefill(self, params: Any, padded_tokens: jax.Array, true_length: int, **kwargs) -> tuple[Any, Any]: ...

    def insert(self, prefix: Any, decode_state: Any, slot: int) -> Any: ...

    def generate(self, params: Any, decode_state: Any) -> tuple[Any, Any]: ...

    @property
    def max_concurrent_decodes(self) -> int: ...

    @property
    def max_prefill_length(self) -> int: ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Prefix:
    """One prefilled request: a batch-1 cache of `max_target_length` slots and its first token.

    cache: `DecoderCache` with batch 1. position: `[]` int32, RoPE position of `token`.
    token: `[]` int32, the first generated token (to be fed next); logprob: `[]` float32, its
    temperature-1 log-prob. key: the request's PRNG key.
    """

    cache: Any
    position: jax.Array
    token: jax.Array
    logprob: jax.Array
    key: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """Per-slot decode state for `S = max_concurrent_decodes` slots.

    caches: a `DecoderCache` whose every leaf has a leading slot axis (`k: [S, 1, KVH, L, Dh]`,
      `index: [S]`). tokens: `[S]` int32 last token (fed at the next step). positions: `[S]`
      its RoPE position. active: `[S]` bool, the slot is decoding. generated: `[S]` int32 tokens
      emitted so far. keys: `[S]` PRNG keys of the requests.
    """

    caches: Any
    tokens: jax.Array
    positions: jax.Array
    active: jax.Array
    generated: jax.Array
    keys: jax.Array


@dataclasses.dataclass(frozen=True)
class SlotData:
    """One slot's result of a `generate` step: `tokens [1]`, `valid [1]`, `lengths` (a scalar)."""

    tokens: np.ndarray
    valid: np.ndarray
    lengths: np.ndarray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ResultTokens:
    """Tokens of one step for all slots: `tokens [S, 1]`, `valid [S, 1]` (slot was decoding),
    `lengths [S]` (tokens the slot has emitted, this one included), `logprobs [S, 1]`."""

    tokens: Any
    valid: Any
    lengths: Any
    logprobs: Any

    def to_numpy(self) -> "ResultTokens":
        """The same result on the host (one transfer per step, not one per slot)."""
        return ResultTokens(*jax.device_get((self.tokens, self.valid, self.lengths, self.logprobs)))

    def get_result_at_slot(self, slot: int) -> SlotData:
        return SlotData(tokens=self.tokens[slot], valid=self.valid[slot], lengths=self.lengths[slot])


class DecodeEngine:
    """Slot-based decoding of a `Decoder` (see the module docstring).

    Args:
      config: the model's `ModelConfig`.
      max_concurrent_decodes: S, the number of slots.
      max_prefill_length: the longest (padded) prompt `prefill` accepts.
      max_target_length: cache slots per request (prompt padding + generated tokens).
      temperature, top_k, top_p: sampling knobs (temperature 0 = greedy).
      stop_ids: a slot stops decoding after emitting one of these.
      quant_format: `load_params` quantizes linear weights to this format ("int8", "int4", "fp8").
    """

    def __init__(self, config: ModelConfig, *, max_concurrent_decodes: int, max_prefill_length: int,
                 max_target_length: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 stop_ids: tuple[int, ...] = (), quant_format: str | None = None):
        if max_concurrent_decodes < 1:
            raise ValueError(f"max_concurrent_decodes must be >= 1; got {max_concurrent_decodes}")
        if not 1 <= max_prefill_length < max_target_length:
            raise ValueError(f"need 1 <= max_prefill_length < max_target_length; got {max_prefill_length} "
                             f"and {max_target_length}")
        self.config = config
        self._slots, self._prefill_len, self._target_len = max_concurrent_decodes, max_prefill_length, max_target_length
        self.knobs = SamplingKnobs.make(temperature, top_k, top_p)
        self.stop_ids = tuple(int(s) for s in stop_ids)
        # Traced, so engines that differ only in knobs or stop ids share compiled programs.
        self._stops = jnp.asarray(self.stop_ids or (_NO_STOP,), jnp.int32)
        self.quant_format = quant_format
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
        self._spec = _Spec(self.graphdef, config, max_target_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str | None = None, **engine_kwargs: Any
                        ) -> tuple["DecodeEngine", Any]:
        """`(engine, params)` for a Hugging Face checkpoint directory (see `models.hf.load_pretrained`)."""
        from jaxrl_llm.models.hf import load_pretrained  # noqa: PLC0415 (transformers-free path otherwise)

        model, config = load_pretrained(path, dtype=dtype)
        engine = cls(config, **engine_kwargs)
        return engine, engine.load_params(model)

    # --- JetStream Engine interface -------------------------------------------------------------

    @property
    def max_concurrent_decodes(self) -> int:
        return self._slots

    @property
    def max_prefill_length(self) -> int:
        return self._prefill_len

    @property
    def max_target_length(self) -> int:
        return self._target_len

    @property
    def samples_per_slot(self) -> int:
        return 1

    def load_params(self, source: Any) -> Any:
        """Parameters for this engine from a `Decoder`, an `nnx.State` of one, or a checkpoint path;
        LoRA adapters merged into their base (`merge_lora`), then quantized to `quant_format` when set."""
        if isinstance(source, str | Path):
            from jaxrl_llm.models.hf import load_pretrained  # noqa: PLC0415

            source, _ = load_pretrained(source, dtype=self.config.dtype, param_dtype=self.config.param_dtype)
        params = merge_lora(nnx.split(source)[1] if isinstance(source, nnx.Module) else source)
        return params if self.quant_format is None else quantize_params(params, self.quant_format)

    def init_decode_state(self) -> DecodeState:
        """All slots empty."""
        one = init_cache(self.config, 1, self._target_len)
        slots = self._slots
        return DecodeState(
            caches=jax.tree.map(lambda x: jnp.zeros((slots,) + x.shape, x.dtype), one),
            tokens=jnp.zeros((slots,), jnp.int32), positions=jnp.zeros((slots,), jnp.int32),
            active=jnp.zeros((slots,), bool), generated=jnp.zeros((slots,), jnp.int32),
            keys=jax.random.split(jax.random.key(0), slots))

    def prefill(self, params: Any, padded_tokens: jax.Array, true_length: int, *, key: Any = None
                ) -> tuple[Prefix, ResultTokens]:
        """Prefills one prompt: `padded_tokens [T]` int32 right-padded, `true_length` real tokens.

        Returns `(prefix, first_token)`: `first_token` is a one-row `ResultTokens`. `key` seeds this
        request's draws (default `jax.random.key(0)`). `T` (<= max_prefill_length) is a compile key:
        pad to a few bucket widths.
        """
        padded_tokens = jnp.asarray(padded_tokens, jnp.int32)
        if padded_tokens.ndim != 1 or not 1 <= padded_tokens.shape[0] <= self._prefill_len:
            raise ValueError(f"padded_tokens must be [T] with 1 <= T <= max_prefill_length={self._prefill_len}; "
                             f"got shape {padded_tokens.shape}")
        if not 1 <= int(true_length) <= padded_tokens.shape[0]:
            raise ValueError(f"true_length must be in [1, {padded_tokens.shape[0]}]; got {true_length}")
        key = as_prng_key(jax.random.key(0) if key is None else key)
        prefix = _prefill_jit(self._spec, params, padded_tokens, jnp.int32(true_length), key, self.knobs)
        ones = jnp.ones((1, 1), jnp.int32)
        return prefix, ResultTokens(prefix.token.reshape(1, 1), ones, ones[:, 0], prefix.logprob.reshape(1, 1))

    def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int) -> DecodeState:
        """`decode_state` with `prefix` placed in `slot` (whatever was there is dropped)."""
        if not 0 <= int(slot) < self._slots:
            raise ValueError(f"slot must be in [0, {self._slots}); got {slot}")
        return _insert_jit(self._spec, prefix, decode_state, jnp.int32(slot), self._stops)

    def generate(self, params: Any, decode_state: DecodeState) -> tuple[DecodeState, ResultTokens]:
        """One token for every live slot; `valid` marks the slots that were decoding."""
        return _generate_jit(self._spec, params, decode_state, self.knobs, self._stops)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the compiled engine programs specialise on (hashable: a static `jit` argument)."""

    graphdef: nnx.GraphDef
    config: ModelConfig
    target_len: int


def _is_stop(token: jax.Array, stops: jax.Array) -> jax.Array:
    return jnp.any(token[..., None] == stops, axis=-1)


def _prefill_fn(spec: _Spec, params, tokens, true_length, key, knobs) -> Prefix:
    model = nnx.merge(spec.graphdef, params)
    positions, segment_ids = right_padded_layout(true_length[None], tokens.shape[0])
    cache = init_cache(spec.config, 1, spec.target_len)
    draw, cache = prefill_step(model, tokens[None, :], positions, segment_ids, cache, (true_length - 1)[None],
                               jax.random.fold_in(key, 0)[None], knobs)
    return Prefix(cache=cache, position=true_length, token=draw.token[0], logprob=draw.logprob[0], key=key)


def _insert_fn(spec: _Spec, prefix: Prefix, state: DecodeState, slot, stops) -> DecodeState:
    def put(stack, value):
        return jax.lax.dynamic_update_index_in_dim(stack, jnp.asarray(value, stack.dtype), slot, axis=0)

    room = prefix.cache.index < spec.target_len
    return DecodeState(
        caches=jax.tree.map(put, state.caches, prefix.cache),
        tokens=put(state.tokens, prefix.token),
        positions=put(state.positions, prefix.position),
        active=put(state.active, room & ~_is_stop(prefix.token, stops)),
        generated=put(state.generated, 1),
        keys=put(state.keys, prefix.key))


def _generate_fn(spec: _Spec, params, state: DecodeState, knobs, stops) -> tuple[DecodeState, ResultTokens]:
    model = nnx.merge(spec.graphdef, params)
    # Finished slots still run (fixed shapes) but write padding (segment 0) in place.
    caches = state.caches._replace(index=jnp.minimum(state.caches.index, spec.target_len - 1))
    keys = jax.vmap(jax.random.fold_in)(state.keys, state.generated)

    def slot_step(cache, token, position, live, key):
        # The batch decode step on one slot: a batch of one row over that slot's own cache.
        draw, cache = decode_step(model, token[None], position[None], live[None], cache, key[None], knobs)
        return jax.tree.map(lambda x: x[0], draw), cache

    draw, new_caches = jax.vmap(slot_step)(caches, state.tokens, state.positions, state.active, keys)
    live = state.active
    index = jnp.where(live, new_caches.index, caches.index)
    generated = state.generated + live.astype(jnp.int32)
    new_state = DecodeState(
        caches=new_caches._replace(index=index),
        tokens=jnp.where(live, draw.token, state.tokens),
        positions=state.positions + live.astype(jnp.int32),
        active=live & ~_is_stop(draw.token, stops) & (index < spec.target_len),
        generated=generated,
        keys=state.keys)
    result = ResultTokens(tokens=draw.token[:, None], valid=live.astype(jnp.int32)[:, None], lengths=generated,
                          logprobs=draw.logprob[:, None])
    return new_state, result


# The decode state is donated: `insert` and `generate` update its caches in place.
_prefill_jit = jax.jit(_prefill_fn, static_argnums=(0,))
_insert_jit = jax.jit(_insert_fn, static_argnums=(0,), donate_argnums=(2,))
_generate_jit = jax.jit(_generate_fn, static_argnums=(0,), donate_argnums=(2,))
