"""Held-out evaluation: greedy completions and exact-match accuracy.

Greedy decoding is the rollout sampler's decode loop (`rollout/decode.py`) at temperature 0 over
prompts laid out by `rollout/prompts.py`: left-padded to a common length `P` (padding has
segment id 0, so it is never attended), prefilled in one call, then decoded one token per step
over the KV cache. Compiled once per `(B, P, N)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.tokenizer import Tokenizer, stop_ids_of
from jaxrl_llm.models.lora import merge_lora
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.rollout.decode import decode_loop
from jaxrl_llm.rollout.prompts import left_pad
from jaxrl_llm.rollout.sampling import SamplingKnobs


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens [B, P], lengths [B])` int32, each prompt right-aligned (`rollout.prompts.left_pad`)."""
    return left_pad(prompts, pad_id=pad_id)


def make_greedy_generate(
    parts: ModelParts, max_new_tokens: int, *, valid_vocab_size: int | None = None
) -> Callable[..., jax.Array]:
    """Jitted `generate(params, rest, tokens [B, P], lengths [B]) -> [B, max_new_tokens]` int32.

    `valid_vocab_size`: only ids below it may be chosen (a model's vocabulary is often padded
    past the tokenizer's, and those rows decode to nothing).
    """
    max_new_tokens = int(max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")

    def generate(params: Any, rest: Any, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        model = parts.merge(params, rest)
        rows = jnp.arange(tokens.shape[0], dtype=jnp.int32)
        # No stop ids (-1 never matches): every row decodes exactly max_new_tokens tokens.
        decoded = decode_loop(model, tokens, jnp.asarray(lengths, jnp.int32), rows, jax.random.key(0),
                              SamplingKnobs.make(temperature=0.0), jnp.full((1,), -1, jnp.int32),
                              jnp.int32(max_new_tokens), jnp.int32(0), response_slots=max_new_tokens,
                              valid_vocab_size=valid_vocab_size)
        return decoded.response

    return jax.jit(generate)


def truncate_at_stop(ids: Sequence[int], stop_ids: int | Iterable[int]) -> list[int]:
    """Tokens before the first of `stop_ids` (one id or several; all tokens if none occurs)."""
    stops = {int(stop_ids)} if isinstance(stop_ids, (int, np.integer)) else {int(s) for s in stop_ids}
    ids = [int(i) for i in ids]
    return next((ids[:k] for k, t in enumerate(ids) if t in stops), ids)


def truncate_at_eos(ids: Sequence[int], eos_id: int | Iterable[int]) -> list[int]:
    """`truncate_at_stop` under the name (and keyword) used when eos was the only stop token."""
    return truncate_at_stop(ids, eos_id)


def greedy_completions(
    generate: Callable[..., jax.Array],
    params: Any,
    rest: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int,
) -> list[str]:
    """Greedy completions of `prompts` (`tokenizer.encode_prompt`, as in training), decoded up to a stop id.

    The last batch is padded with copies of the first prompt so every call has shape
    `[batch_size, P]` and the function compiles once per prompt width.
    """
    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    stops = stop_ids_of(tokenizer)
    params = merge_lora(params)  # decode with merged weights: one matmul per projection, not three
    width = max(len(e) for e in encoded)
    texts: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        filler = [chunk[0]] * (batch_size - len(chunk))
        tokens, lengths = left_pad(chunk + filler, width, pad_id=tokenizer.pad_id)
        out = np.asarray(generate(params, rest, tokens, lengths))
        texts.extend(tokenizer.decode(truncate_at_stop(row, stops)) for row in out[: len(chunk)])
    return texts


def exact_match_accuracy(task: Any, problems: Sequence[Any], completions: Sequence[str]) -> float:
    """Mean of `task.score(problem, completion)` (1.0 = exact answer)."""
    if len(problems) != len(completions) or not problems:
        raise ValueError(f"need one completion per problem; got {len(completions)} for {len(problems)}")
    return float(np.mean([task.score(p, c) for p, c in zip(problems, completions)]))
