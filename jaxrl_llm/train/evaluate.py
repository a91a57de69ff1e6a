"""Held-out evaluation for SFT: greedy decoding over the KV cache and exact-match accuracy.

Prompts are left-padded to a common length `P` (padding has segment id 0, so it is never
attended), prefilled in one call, then `max_new_tokens` greedy steps run inside one `lax.scan`,
each feeding the previous argmax token at the next position. Compiled once per `(B, P, N)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.tokenizer import Tokenizer
from jaxrl_llm.models.decoder import init_cache
from jaxrl_llm.parallel.init import ModelParts


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens [B, P], lengths [B])` int32 with each prompt right-aligned (left padding)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def make_greedy_generate(
    parts: ModelParts, max_new_tokens: int, *, valid_vocab_size: int | None = None
) -> Callable[..., jax.Array]:
    """Jitted `generate(params, rest, tokens [B, P], lengths [B]) -> [B, max_new_tokens]` int32.

    `valid_vocab_size`: only ids below it may be chosen (a model's vocabulary is often padded
    past the tokenizer's, and those rows decode to nothing).
    """

    def pick(logits: jax.Array) -> jax.Array:
        if valid_vocab_size is not None:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < valid_vocab_size, logits, -jnp.inf)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def generate(params: Any, rest: Any, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        model = parts.merge(params, rest)
        b, p = tokens.shape
        pad = p - lengths[:, None]
        slot = jnp.arange(p, dtype=jnp.int32)[None, :]
        segment_ids = (slot >= pad).astype(jnp.int32)
        positions = jnp.maximum(slot - pad, 0).astype(jnp.int32)
        cache = init_cache(model.config, b, p + max_new_tokens)
        logits, cache = model(tokens, positions, segment_ids=segment_ids, cache=cache)
        first = pick(logits[:, -1])

        def decode(carry, _):
            token, position, cache = carry
            logits, cache = model(token[:, None], position[:, None], segment_ids=jnp.ones((b, 1), jnp.int32),
                                  cache=cache)
            nxt = pick(logits[:, -1])
            return (nxt, position + 1, cache), token

        _, out = jax.lax.scan(decode, (first, lengths.astype(jnp.int32), cache), None, length=max_new_tokens)
        return out.T

    return jax.jit(generate)


def truncate_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """Tokens before the first `eos_id` (all of them if there is none)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def greedy_completions(
    generate: Callable[..., jax.Array],
    params: Any,
    rest: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int,
) -> list[str]:
    """Greedy completions of `prompts` (bos prepended as in training), decoded up to eos.

    The last batch is padded with copies of the first prompt so every call has shape
    `[batch_size, P]` and the function compiles once per prompt width.
    """
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    encoded = [bos + tokenizer.encode(p) for p in prompts]
    width = max(len(e) for e in encoded)
    texts: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        filler = [chunk[0]] * (batch_size - len(chunk))
        tokens, lengths = left_pad_prompts(chunk + filler, tokenizer.pad_id)
        tokens = np.pad(tokens, ((0, 0), (width - tokens.shape[1], 0)), constant_values=tokenizer.pad_id)
        out = np.asarray(generate(params, rest, tokens, lengths))
        texts.extend(tokenizer.decode(truncate_at_eos(row, tokenizer.eos_id)) for row in out[: len(chunk)])
    return texts


def exact_match_accuracy(task: Any, problems: Sequence[Any], completions: Sequence[str]) -> float:
    """Mean of `task.score(problem, completion)` (1.0 = exact answer)."""
    if len(problems) != len(completions) or not problems:
        raise ValueError(f"need one completion per problem; got {len(completions)} for {len(problems)}")
    return float(np.mean([task.score(p, c) for p, c in zip(problems, completions)]))
