"""The rollout sampler: prefill + a `lax.while_loop` decode, compiled once per shape bucket.

The device program is `decode.decode_loop` (the one decode loop of the package); this module
lays prompts out (`prompts.py`), buckets shapes, shards the batch and packs the `Rollout`.

`generate(graphdef, params, prompts, key=..., config=SamplingConfig(...))` returns a `Rollout`.
`params` may hold plain arrays (fp32 / bf16) or `QuantArray` linear weights
(`jaxrl_llm.quant.quantize_params`): the decoder dispatches in `models.linear`, so the same
compiled program shape serves every precision.

Compilation. The prompt width is rounded up to a multiple of `prompt_bucket` (extra left padding)
and the response buffer to a power of two; `max_new_tokens`, temperature, top-k, top-p and the
stop ids are traced values. So `jit` compiles once per (batch, prompt bucket, response bucket,
params structure). The decode loop stops as soon as every row has finished.

Sharding. With `mesh`, the batch (prompts times samples, padded to a multiple of the batch shard
count) is sharded over the mesh axes that the logical `batch` axis maps to (`data`, `fsdp`), and
so is the KV cache; parameters keep the shardings they were trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.batch import constrain_rows, place_rows, row_shards
from jaxrl_llm.rollout.decode import (  # noqa: F401 (FINISH_* are part of this module's API)
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_REASONS,
    FINISH_STOP,
    Decoded,
    decode_loop,
)
from jaxrl_llm.rollout.prompts import check_prompt_array, left_pad, next_power_of_two, round_up
from jaxrl_llm.rollout.sampling import SamplingKnobs, as_prng_key

_STOP_ID_BUCKET = 8  # stop-id lists are padded (with -1) to a multiple of this many ids


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Sampler knobs.

    max_new_tokens: N, the longest response.
    temperature: 0 = greedy; top_k: 0 = off; top_p: 1 = off (applied in that order, in fp32).
    n: samples per prompt (rows `b * n .. b * n + n - 1` belong to prompt `b`).
    stop_ids: a row finishes right after emitting one of these (the stop token is kept).
    pad_id: fills the response after a row has finished.
    prompt_bucket: prompt widths are rounded up to a multiple of this.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    prompt_bucket: int = 16

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be a positive int; got {self.max_new_tokens!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingConfig.n must be a positive int; got {self.n!r}")
        if self.prompt_bucket < 1:
            raise ValueError(f"SamplingConfig.prompt_bucket must be >= 1; got {self.prompt_bucket}")
        object.__setattr__(self, "stop_ids", tuple(int(s) for s in self.stop_ids))
        SamplingKnobs.make(self.temperature, self.top_k, self.top_p)  # validates the three knobs

    def knobs(self) -> SamplingKnobs:
        return SamplingKnobs.make(self.temperature, self.top_k, self.top_p)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled responses for `R = B * n` rows (prompt `b`'s samples are rows `b*n .. b*n+n-1`).

    tokens: `[R, P + N]` int32, left-padded prompt then response (pad_id after the end).
    response: `[R, N]` int32, the generated tokens.
    response_mask: `[R, N]` int32, 1 on generated tokens (the stop token included).
    logprobs: `[R, N]` float32, `log_softmax(logits)` of the sampling model's raw logits at the
      drawn token: the temperature-1 policy of the weights that sampled (quantized or not); 0 off mask.
    processed_logprobs: `[R, N]` float32, log-prob under the distribution actually sampled from
      (after temperature / top-k / top-p; 0 for greedy draws and off mask).
    lengths: `[R]` int32, generated tokens per row.
    prompt_lengths: `[R]` int32, real prompt tokens per row.
    finish_reasons: `[R]` int32, `FINISH_STOP` (a stop id was emitted) or `FINISH_LENGTH`.
    """

    tokens: jax.Array
    response: jax.Array
    response_mask: jax.Array
    logprobs: jax.Array
    processed_logprobs: jax.Array
    lengths: jax.Array
    prompt_lengths: jax.Array
    finish_reasons: jax.Array

    @property
    def prompt_width(self) -> int:
        """P, the (left-padded) prompt columns of `tokens`."""
        return self.tokens.shape[1] - self.response.shape[1]


def _decode(graphdef: nnx.GraphDef, params, tokens, lengths, row_ids, key, knobs, stop_ids, max_new_tokens,
            pad_id, *, response_slots: int, mesh: Mesh | None) -> Decoded:
    """`decode.decode_loop` on `nnx.merge(graphdef, params)`, its cache batch-sharded on `mesh`."""
    model = nnx.merge(graphdef, params)
    return decode_loop(model, tokens, lengths, row_ids, key, knobs, stop_ids, max_new_tokens, pad_id,
                       response_slots=response_slots, constrain=lambda x: constrain_rows(x, mesh))


def _decode_on_mesh(*args, response_slots: int, mesh: Mesh | None):
    """`_decode`, traced with the model's residual stream pinned to `mesh` (parallel/activations.py)."""
    with activation_mesh(mesh):
        return _decode(*args, response_slots=response_slots, mesh=mesh)


_decode_jit = jax.jit(_decode_on_mesh, static_argnums=(0,), static_argnames=("response_slots", "mesh"))


def _bucket_rows(tokens: np.ndarray, lens: np.ndarray, config: SamplingConfig, shards: int
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Left-pads `tokens [B, P]` to the prompt bucket and repeats each row `n` times.

    Returns `(tokens [R', Pb], lengths [R'], R)`: `R = B * n` real rows, then copies of row 0 up to
    a multiple of `shards` (so the batch splits evenly; they are dropped after sampling).
    """
    width = round_up(tokens.shape[1], config.prompt_bucket)
    tokens = np.pad(tokens, ((0, 0), (width - tokens.shape[1], 0)), constant_values=config.pad_id)
    tokens, lens = np.repeat(tokens, config.n, axis=0), np.repeat(lens, config.n)
    rows = tokens.shape[0]
    extra = round_up(rows, shards) - rows
    tokens = np.concatenate([tokens, np.repeat(tokens[:1], extra, axis=0)])
    return tokens, np.concatenate([lens, np.repeat(lens[:1], extra)]), rows


def generate(graphdef: nnx.GraphDef, params, prompts: Sequence[Sequence[int]] | np.ndarray, *, key,
             config: SamplingConfig, lengths: np.ndarray | None = None, mesh: Mesh | None = None) -> Rollout:
    """Samples `config.n` responses per prompt.

    Args:
      graphdef, params: `nnx.split(decoder)`; params may hold `QuantArray` linear weights.
      prompts: a list of token-id lists, or a left-padded `[B, P]` int array with `lengths [B]`.
      key: a PRNG key; the same key, prompts and config give the same samples.
      config: the sampling knobs.
      lengths: `[B]` real prompt lengths, required with (and only with) an array of prompts.
      mesh: shard the batch over the `batch` mesh axes (`data`, `fsdp`); params are used as placed.
    Returns:
      A `Rollout` with `R = B * n` rows, `P` = longest prompt, `N = config.max_new_tokens`.
    """
    vocab_size = nnx.merge(graphdef, params).config.vocab_size
    if lengths is None:
        if isinstance(prompts, np.ndarray | jax.Array):
            raise ValueError("lengths [B] is required when prompts is a [B, P] array")
        tokens, lens = left_pad(prompts, pad_id=config.pad_id)
        tokens, lens = check_prompt_array(tokens, lens, vocab_size)
    else:
        tokens, lens = check_prompt_array(prompts, lengths, vocab_size)
        tokens = tokens[:, tokens.shape[1] - int(lens.max()):]  # drop all-padding columns
    tokens, lens, rows = _bucket_rows(tokens, lens, config, row_shards(mesh))
    stop = np.full(round_up(len(config.stop_ids), _STOP_ID_BUCKET), -1, np.int32)
    stop[:len(config.stop_ids)] = config.stop_ids
    inputs = (jnp.asarray(tokens), jnp.asarray(lens), jnp.arange(tokens.shape[0], dtype=jnp.int32))
    if mesh is not None:
        inputs = place_rows(inputs, mesh)
    response, mask, logp, plogp, finish = _decode_jit(
        graphdef, params, *inputs, as_prng_key(key), config.knobs(), jnp.asarray(stop),
        jnp.int32(config.max_new_tokens), jnp.int32(config.pad_id),
        response_slots=next_power_of_two(config.max_new_tokens), mesh=mesh)
    n_new = config.max_new_tokens
    response, mask = response[:rows, :n_new], mask[:rows, :n_new]
    prompt_tokens = inputs[0][:rows, tokens.shape[1] - int(lens.max()):]
    return Rollout(
        tokens=jnp.concatenate([prompt_tokens, response], axis=1),
        response=response,
        response_mask=mask,
        logprobs=logp[:rows, :n_new],
        processed_logprobs=plogp[:rows, :n_new],
        lengths=jnp.sum(mask, axis=1, dtype=jnp.int32),
        prompt_lengths=inputs[1][:rows],
        finish_reasons=finish[:rows],
    )
