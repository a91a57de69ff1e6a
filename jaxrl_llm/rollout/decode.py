"""Decoding over a KV cache: one prefill step, one single-token decode step, and the decode loop.

Every generator in the package decodes with these functions: the rollout sampler (`sampler.py`)
jits `decode_loop`, greedy evaluation (`train/evaluate.py`) is that loop with temperature 0, and
the serving engine (`engine.py`) prefills with `prefill_step` and `vmap`s `decode_step` over its
slots, one batch-1 cache per slot.

A step feeds each row one token at its RoPE position, with segment id 1 when the row is live and
0 when it has finished (a finished row's token is written as padding, never attended), then draws
the next token with the row's own key (`sampling.sample_tokens`). `valid_vocab_size`, when given,
forbids ids at or above it (a model's vocabulary is often padded past the tokenizer's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.models.decoder import init_cache
from jaxrl_llm.rollout.prompts import prompt_layout
from jaxrl_llm.rollout.sampling import Draw, SamplingKnobs, sample_tokens

FINISH_NONE, FINISH_STOP, FINISH_LENGTH = 0, 1, 2
FINISH_REASONS = {FINISH_NONE: "none", FINISH_STOP: "stop", FINISH_LENGTH: "length"}


class Decoded(NamedTuple):
    """What `decode_loop` returns for `B` rows and `Nb` response slots.

    response: `[B, Nb]` int32 (pad_id after a row's end). mask: `[B, Nb]` int32, 1 on generated
    tokens (the stop token included). logprobs, processed_logprobs: `[B, Nb]` float32 (see
    `sampling.py`), 0 off mask. finish_reasons: `[B]` int32 `FINISH_*`.
    """

    response: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    processed_logprobs: jax.Array
    finish_reasons: jax.Array


def row_keys(key: jax.Array, step: jax.Array, row_ids: jax.Array) -> jax.Array:
    """`[B]` keys `fold_in(fold_in(key, step), row_ids[b])`: a row's draws never depend on its batch."""
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(row_ids)


def draw_next(model: Any, hidden: jax.Array, keys: jax.Array, knobs: SamplingKnobs, *,
              valid_vocab_size: int | None = None) -> Draw:
    """Draws the token after `hidden [B, 1, D]` (final-norm states) with `keys [B]`."""
    logits = model.logits(hidden)[:, 0]  # [B, V] float32
    if valid_vocab_size is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < valid_vocab_size, logits, -jnp.inf)
    return sample_tokens(keys, logits, knobs)


def prefill_step(model: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: Any,
                 last: jax.Array, keys: jax.Array, knobs: SamplingKnobs, *,
                 valid_vocab_size: int | None = None) -> tuple[Draw, Any]:
    """Runs `tokens [B, P]` into `cache` and draws each row's first response token.

    `positions`, `segment_ids`: `[B, P]` int32 (see `prompts.py`). `last`: `[B]` int32, the column
    of each row's last prompt token (`P - 1` for left padding). Returns `(Draw of [B], cache)`.
    """
    hidden, cache = model.hidden(tokens, positions, segment_ids=segment_ids, cache=cache)
    last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, D]
    return draw_next(model, last_hidden, keys, knobs, valid_vocab_size=valid_vocab_size), cache


def decode_step(model: Any, token: jax.Array, position: jax.Array, live: jax.Array, cache: Any, keys: jax.Array,
                knobs: SamplingKnobs, *, valid_vocab_size: int | None = None) -> tuple[Draw, Any]:
    """Feeds `token [B]` at `position [B]` and draws the next token of every row.

    `live [B]` (bool or int): 0 writes the token as padding (segment 0). `keys`: `[B]` PRNG keys.
    Returns `(Draw of [B], cache)`; the cache write index advances by one.
    """
    hidden, cache = model.hidden(token[:, None], position[:, None], segment_ids=live.astype(jnp.int32)[:, None],
                                 cache=cache)
    return draw_next(model, hidden, keys, knobs, valid_vocab_size=valid_vocab_size), cache


def decode_loop(model: Any, tokens: jax.Array, lengths: jax.Array, row_ids: jax.Array, key: jax.Array,
                knobs: SamplingKnobs, stop_ids: jax.Array, max_new_tokens: jax.Array, pad_id: jax.Array, *,
                response_slots: int, valid_vocab_size: int | None = None,
                constrain: Callable[[jax.Array], jax.Array] = lambda x: x) -> Decoded:
    """Prefills left-padded `tokens [B, P]` and decodes up to `max_new_tokens` (<= response_slots).

    Args:
      model: a `Decoder` (plain or quantized weights).
      tokens, lengths: `[B, P]` left-padded prompts and `[B]` real lengths.
      row_ids: `[B]` int32; row `b`'s draw at step `i` uses `fold_in(fold_in(key, i), row_ids[b])`.
      knobs: temperature (0 = greedy), top-k, top-p.
      stop_ids: `[S]` int32 (pad with -1); a row finishes right after emitting one.
      max_new_tokens, pad_id: `[]` int32 (traced).
      response_slots: static `Nb`; the cache holds `P + Nb` slots.
      valid_vocab_size: static; ids at or above it are never drawn.
      constrain: applied to every cache leaf (e.g. a batch sharding constraint).
    Returns:
      `Decoded`; the loop stops as soon as every row has finished.
    """
    b, width = tokens.shape
    positions, segment_ids = prompt_layout(lengths, width)
    cache = jax.tree.map(constrain, init_cache(model.config, b, width + response_slots))
    last = jnp.full((b,), width - 1, jnp.int32)
    first, cache = prefill_step(model, tokens, positions, segment_ids, cache, last, row_keys(key, 0, row_ids),
                                knobs, valid_vocab_size=valid_vocab_size)

    def record(i, d: Draw, state):
        out, done, finish = state
        active = ~done
        token = jnp.where(active, d.token, pad_id)
        columns = (token, active.astype(jnp.int32), jnp.where(active, d.logprob, 0.0),
                   jnp.where(active, d.processed_logprob, 0.0))
        out = tuple(o.at[:, i].set(c) for o, c in zip(out, columns))
        stopped = active & jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        full = active & ~stopped & (i + 1 >= max_new_tokens)
        finish = jnp.where(stopped, FINISH_STOP, jnp.where(full, FINISH_LENGTH, finish))
        return out, done | stopped | full, finish

    out = (jnp.full((b, response_slots), pad_id, jnp.int32), jnp.zeros((b, response_slots), jnp.int32),
           jnp.zeros((b, response_slots), jnp.float32), jnp.zeros((b, response_slots), jnp.float32))
    state = record(0, first, (out, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32)))

    def cond(carry):
        i, _, (_, done, _) = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, state = carry
        (response, mask, _, _), _, _ = state
        prev = jax.lax.dynamic_index_in_dim(response, i - 1, axis=1, keepdims=False)  # [B]
        prev_live = jax.lax.dynamic_index_in_dim(mask, i - 1, axis=1, keepdims=False)
        d, cache = decode_step(model, prev, lengths + i - 1, prev_live, cache, row_keys(key, i, row_ids), knobs,
                               valid_vocab_size=valid_vocab_size)
        return i + 1, jax.tree.map(constrain, cache), record(i, d, state)

    _, _, (out, _, finish) = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, state))
    return Decoded(*out, finish)
