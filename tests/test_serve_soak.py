"""Serving under load: many requests of random lengths through few slots, with cancellations and
invalid requests. Every valid request finishes, invalid ones are rejected with a reason, cancelled
ones stop, no slot leaks, and no request's tokens depend on its neighbours."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, preset
from jaxrl_llm.rollout import DecodeEngine, Request, serve

CFG = preset("tiny")
ENGINE = dict(max_concurrent_decodes=3, max_prefill_length=16, max_target_length=32)


@pytest.fixture(scope="module")
def setup():
    _, state = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, state)
    stop = 7
    return DecodeEngine(CFG, temperature=1.0, stop_ids=(stop,), **ENGINE), params, stop


def test_soak_with_random_lengths_cancellations_and_invalid_requests(setup):
    engine, params, stop = setup
    rng = np.random.default_rng(0)
    requests, kinds = [], []
    for i in range(40):
        kind = rng.choice(["ok", "ok", "ok", "long", "vocab"])
        n = int(rng.integers(20, 30)) if kind == "long" else int(rng.integers(1, 17))
        tokens = rng.integers(1, CFG.vocab_size, n).tolist()
        if kind == "vocab":
            tokens[-1] = CFG.vocab_size + 3
        requests.append(Request(tokens, int(rng.integers(1, 12)), seed=i))
        kinds.append(str(kind))
    cancel_at = {i: int(rng.integers(0, 6)) for i in range(40) if kinds[i] == "ok" and rng.random() < 0.25}
    out = serve(engine, params, requests, cancel=lambda i, step: i in cancel_at and step >= cancel_at[i])
    assert len(out) == 40
    for i, (req, kind, c) in enumerate(zip(requests, kinds, out)):
        if kind == "long":
            assert c.finish_reason == "rejected" and "exceeds the engine's max_prefill_length=16" in c.detail
            assert c.tokens == []
        elif kind == "vocab":
            assert c.finish_reason == "rejected" and "outside the vocabulary" in c.detail
        elif i in cancel_at:
            assert c.finish_reason in ("cancelled", "stop", "length", "cache_full")
        else:
            assert c.finish_reason in ("stop", "length", "cache_full"), (i, c)
            assert 1 <= len(c.tokens) <= req.max_new_tokens and len(c.logprobs) == len(c.tokens)
            assert (c.finish_reason == "stop") == (c.tokens[-1] == stop)
            if c.finish_reason == "length":
                assert len(c.tokens) == req.max_new_tokens
    assert any(c.finish_reason == "cancelled" for c in out)
    # Isolation: every uncancelled valid request equals serving it alone (same seed).
    for i in [i for i, k in enumerate(kinds) if k == "ok" and i not in cancel_at][:6]:
        alone = serve(engine, params, [requests[i]])[0]
        assert alone.tokens == out[i].tokens and alone.finish_reason == out[i].finish_reason


def test_cancelling_everything_frees_every_slot(setup):
    engine, params, _ = setup
    requests = [Request([1, 2, 3], 10, seed=i) for i in range(7)]
    out = serve(engine, params, requests, cancel=lambda i, step: step >= 1)
    assert [c.finish_reason for c in out[:3]] == ["cancelled"] * 3  # the first three held slots
    assert all(c.finish_reason == "cancelled" for c in out)
    # The engine serves normally afterwards.
    assert serve(engine, params, requests[:2])[0].finish_reason in ("stop", "length")
