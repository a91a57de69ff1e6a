"""A continuous-batching loop over an `EngineAPI` engine.

Requests wait in a queue; whenever a slot is free the next request is prefilled and inserted,
then one `generate` step advances every live slot. A request leaves its slot as soon as it emits
a stop id, reaches its `max_new_tokens`, or its slot's cache is full; the freed slot takes the
next request at the following step. One device-to-host copy per step brings back all slots'
tokens.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import jax

from jaxrl_llm.rollout.engine import EngineAPI
from jaxrl_llm.rollout.prompts import right_pad_bucket


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation request: prompt token ids, how many tokens to generate at most, and an
    optional seed for its draws (default: its index in the request list)."""

    tokens: Sequence[int]
    max_new_tokens: int
    seed: int | None = None

    def __post_init__(self):
        if len(self.tokens) < 1:
            raise ValueError("Request.tokens must hold at least one token")
        if self.max_new_tokens < 1:
            raise ValueError(f"Request.max_new_tokens must be >= 1; got {self.max_new_tokens}")


@dataclasses.dataclass
class Completion:
    """A finished request: generated `tokens`, their temperature-1 `logprobs`, and why it ended
    (`"stop"`, `"length"`, `"cache_full"`, `"cancelled"` with the tokens so far, or `"rejected"` with
    no tokens and the reason in `detail`)."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str = ""
    detail: str = ""


def rejection(request: Request, engine: EngineAPI) -> str:
    """Why `engine` cannot serve `request` ("" when it can): a prompt longer than the prefill
    bucket, or token ids outside the model's vocabulary."""
    if len(request.tokens) > engine.max_prefill_length:
        return (f"prompt of {len(request.tokens)} tokens exceeds the engine's max_prefill_length="
                f"{engine.max_prefill_length}")
    vocab = getattr(getattr(engine, "config", None), "vocab_size", None)
    bad = [t for t in request.tokens if not 0 <= int(t) < (vocab if vocab is not None else 2**31)]
    if bad:
        return f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})"
    return ""


def serve(engine: EngineAPI, params, requests: Sequence[Request], *, key=None,
          stop_ids: Sequence[int] | None = None, pad_id: int = 0,
          cancel: Callable[[int, int], bool] | None = None) -> list[Completion]:
    """Runs `requests` to completion with continuous batching; returns completions in request order.

    Request `i` samples with `jax.random.fold_in(key, seed)` (seed: `requests[i].seed`, else `i`;
    default key 0), so its tokens do not depend on which other requests share the engine.
    `stop_ids` default to the engine's. A request the engine cannot serve (`rejection`) ends as
    `"rejected"` with the reason, and the others still run. `cancel(index, step)`, polled for every
    waiting and running request before each decode step, ends a request as `"cancelled"` and frees its
    slot for the next one. Every slot is free again when this returns (checked).
    """
    key = jax.random.key(0) if key is None else key
    stops = {int(s) for s in (getattr(engine, "stop_ids", ()) if stop_ids is None else stop_ids)}
    state = engine.init_decode_state()
    pending = collections.deque(enumerate(requests))
    free = list(range(engine.max_concurrent_decodes))
    owner: dict[int, int] = {}  # slot -> request index
    done: dict[int, Completion] = {}

    def finished(index: int, completion: Completion, cache_full: bool) -> str:
        if completion.tokens[-1] in stops:
            return "stop"
        if len(completion.tokens) >= requests[index].max_new_tokens:
            return "length"
        return "cache_full" if cache_full else ""

    step = 0

    def cancelled(index: int) -> bool:
        if cancel is None or not cancel(index, step):
            return False
        done.setdefault(index, Completion([], [])).finish_reason = "cancelled"
        return True

    while pending or owner:
        if cancel is not None:
            pending = collections.deque((i, r) for i, r in pending if not cancelled(i))
            for slot, index in list(owner.items()):
                if cancelled(index):
                    del owner[slot]
                    free.append(slot)
        while pending and free:
            index, request = pending.popleft()
            reason = rejection(request, engine)
            if reason:
                done[index] = Completion([], [], "rejected", reason)
                continue
            padded = right_pad_bucket(request.tokens, engine.max_prefill_length, pad_id)
            seed = index if request.seed is None else request.seed
            prefix, first = engine.prefill(params, padded, len(request.tokens), key=jax.random.fold_in(key, seed))
            first = first.to_numpy()
            done[index] = Completion([int(first.tokens[0, 0])], [float(first.logprobs[0, 0])])
            if finished(index, done[index], cache_full=False):
                done[index].finish_reason = finished(index, done[index], cache_full=False)
                continue
            slot = free.pop(0)
            state = engine.insert(prefix, state, slot)
            owner[slot] = index
        if not owner:
            continue
        step += 1
        state, result = engine.generate(params, state)
        result = result.to_numpy()
        for slot, index in list(owner.items()):
            completion = done[index]
            if result.valid[slot, 0]:
                completion.tokens.append(int(result.tokens[slot, 0]))
                completion.logprobs.append(float(result.logprobs[slot, 0]))
            reason = finished(index, completion, cache_full=not result.valid[slot, 0])
            if reason:
                completion.finish_reason = reason
                del owner[slot]
                free.append(slot)
    if sorted(free) != list(range(engine.max_concurrent_decodes)):
        raise RuntimeError(f"serving leaked slots: free {sorted(free)} of {engine.max_concurrent_decodes}")
    return [done[i] for i in range(len(requests))]
