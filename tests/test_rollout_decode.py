"""The one decode loop: sampler, greedy evaluation and engine all equal a plain no-cache decoder.

The reference below shares nothing with `rollout/decode.py` or `rollout/sampling.py`: every step
re-runs the whole right-padded sequence without a cache, and temperature / top-k / top-p are
applied in numpy; only the documented per-row keys and `jax.random.categorical` are common.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, functional, preset
from jaxrl_llm.parallel.init import abstract_model, split_module
from jaxrl_llm.rollout import FINISH_LENGTH, FINISH_STOP, DecodeEngine, Request, SamplingConfig, generate, serve
from jaxrl_llm.rollout.prompts import left_pad
from jaxrl_llm.train.evaluate import make_greedy_generate

CFG = preset("tiny")
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
WIDTH = 32  # the reference's fixed sequence width: one compile of the full forward per row count
forward = jax.jit(functional.forward, static_argnums=0)


def _scaled(tree):
    # Larger-than-init weights give peaked next-token distributions (no near-ties for argmax).
    return jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, tree)


@pytest.fixture(scope="module")
def model():
    graphdef, params = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    return graphdef, _scaled(params)


def _plain_truncate(scaled, top_k, top_p):
    """`scaled [V]` with everything outside top-k, then outside the top-p nucleus, set to -inf."""
    order = np.argsort(-scaled, kind="stable")[: top_k or scaled.shape[0]]
    top = scaled[order].astype(np.float64)
    probs = np.exp(top - top.max())
    probs /= probs.sum()
    keep = order[np.cumsum(probs) - probs < top_p]
    out = np.full_like(scaled, -np.inf)
    out[keep] = scaled[keep]
    return out


def _log_softmax(row):
    row = row.astype(np.float64)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def reference_decode(model, prompts, max_new, keys_at, *, temperature=0.0, top_k=0, top_p=1.0, stop_ids=(),
                     valid_vocab_size=None):
    """No-cache decoding of `prompts` (row r for `max_new[r]` tokens, or until a stop id).

    `keys_at(step)` gives the `[R]` keys of a step. Returns per row `(tokens, logprobs,
    processed_logprobs)` lists: the temperature-1 log-prob and the sampled distribution's.
    """
    graphdef, params = model
    rows = len(prompts)
    max_new = [max_new] * rows if isinstance(max_new, int) else list(max_new)
    seqs = [list(p) for p in prompts]
    out = [([], [], []) for _ in range(rows)]
    live = [True] * rows
    for step in range(max(max_new)):
        tokens = np.zeros((rows, WIDTH), np.int32)
        segments = np.zeros_like(tokens)
        for r, s in enumerate(seqs):
            tokens[r, :len(s)], segments[r, :len(s)] = s, 1
        positions = np.broadcast_to(np.arange(WIDTH, dtype=np.int32), tokens.shape)
        logits, _ = forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(positions),
                            segment_ids=jnp.asarray(segments))
        last = np.asarray(logits)[np.arange(rows), [len(s) - 1 for s in seqs]].astype(np.float32)
        keys = keys_at(step)
        for r in range(rows):
            if not live[r]:
                continue
            row = last[r]
            if valid_vocab_size is not None:
                row = np.where(np.arange(row.shape[0]) < valid_vocab_size, row, -np.inf).astype(np.float32)
            if temperature == 0:
                token, processed_logprob = int(np.argmax(row)), 0.0
            else:
                processed = _plain_truncate(row / np.float32(temperature), top_k, top_p)
                token = int(jax.random.categorical(keys[r], jnp.asarray(processed)))
                processed_logprob = _log_softmax(processed)[token]
            for column, value in zip(out[r], (token, _log_softmax(row)[token], processed_logprob)):
                column.append(value)
            seqs[r].append(token)
            live[r] = token not in stop_ids and len(out[r][0]) < max_new[r]
    return out


def _sampler_keys(key, rows):
    return lambda step: [jax.random.fold_in(jax.random.fold_in(key, step), r) for r in range(rows)]


SETTINGS = {
    "temperature_1": SamplingConfig(6, temperature=1.0, n=2),
    "temperature_0.7_top_k_5": SamplingConfig(7, temperature=0.7, top_k=5),
    "top_p_0.9": SamplingConfig(6, temperature=1.0, top_p=0.9, n=2),
    "all_knobs_and_stops": SamplingConfig(12, temperature=1.3, top_k=8, top_p=0.8, stop_ids=(8, 24),
                                          pad_id=127),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_sampler_equals_no_cache_reference(model, name):
    config = SETTINGS[name]
    key = jax.random.key(3)
    rollout = generate(*model, PROMPTS, key=key, config=config)
    prompts = [p for p in PROMPTS for _ in range(config.n)]
    expected = reference_decode(model, prompts, config.max_new_tokens, _sampler_keys(key, len(prompts)),
                                temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                                stop_ids=config.stop_ids)
    n = config.max_new_tokens
    for r, (tokens, logp, plogp) in enumerate(expected):
        length = len(tokens)
        np.testing.assert_array_equal(rollout.response[r, :length], tokens)
        np.testing.assert_array_equal(rollout.response[r, length:], config.pad_id)
        np.testing.assert_array_equal(rollout.response_mask[r], np.arange(n) < length)
        np.testing.assert_allclose(rollout.logprobs[r, :length], logp, atol=1e-5)
        np.testing.assert_allclose(rollout.processed_logprobs[r, :length], plogp, atol=1e-5)
        stopped = tokens[-1] in config.stop_ids
        assert int(rollout.finish_reasons[r]) == (FINISH_STOP if stopped else FINISH_LENGTH)
    if config.stop_ids:  # the stop path is exercised: some row ends early, some runs to the limit
        assert {int(f) for f in rollout.finish_reasons} == {FINISH_STOP, FINISH_LENGTH}


@pytest.fixture(scope="module")
def eval_parts():
    module = Decoder(CFG, rngs=nnx.Rngs(0))
    params, rest = split_module(module)
    return abstract_model(lambda: Decoder(CFG, rngs=nnx.Rngs(0))), _scaled(params), rest


def test_greedy_evaluation_is_the_sampler_at_temperature_zero(model, eval_parts):
    parts, params, rest = eval_parts
    tokens, lengths = left_pad(PROMPTS)
    out = make_greedy_generate(parts, 6)(params, rest, tokens, lengths)
    assert out.shape == (3, 6) and out.dtype == jnp.int32
    greedy = generate(*model, PROMPTS, key=jax.random.key(0), config=SamplingConfig(6, temperature=0.0))
    np.testing.assert_array_equal(out, greedy.response)
    expected = reference_decode(model, PROMPTS, 6, _sampler_keys(jax.random.key(0), 3))
    np.testing.assert_array_equal(out, [tokens for tokens, _, _ in expected])


def test_greedy_evaluation_never_chooses_ids_past_valid_vocab_size(model, eval_parts):
    parts, params, rest = eval_parts
    tokens, lengths = left_pad(PROMPTS)
    out = np.asarray(make_greedy_generate(parts, 6, valid_vocab_size=40)(params, rest, tokens, lengths))
    assert out.max() < 40
    expected = reference_decode(model, PROMPTS, 6, _sampler_keys(jax.random.key(0), 3), valid_vocab_size=40)
    np.testing.assert_array_equal(out, [tokens for tokens, _, _ in expected])
    unmasked = np.asarray(make_greedy_generate(parts, 6)(params, rest, tokens, lengths))
    assert unmasked.max() >= 40  # the mask changes the answer here


ENGINE_PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12], [13]]
ENGINE_MAX_NEW = [6, 3, 12, 4]


@pytest.mark.parametrize("knobs", [dict(temperature=1.0), dict(temperature=0.0),
                                   dict(temperature=0.7, top_k=5, top_p=0.9, stop_ids=(72, 84))])
def test_engine_serving_equals_no_cache_reference(model, knobs):
    graphdef, params = model
    engine = DecodeEngine(CFG, max_concurrent_decodes=2, max_prefill_length=16, max_target_length=32, **knobs)
    key = jax.random.key(7)
    served = serve(engine, params, [Request(p, n) for p, n in zip(ENGINE_PROMPTS, ENGINE_MAX_NEW)], key=key)
    # Request i draws its j-th token with fold_in(fold_in(key, i), j).
    request_keys = [jax.random.fold_in(key, i) for i in range(len(ENGINE_PROMPTS))]
    expected = reference_decode(model, ENGINE_PROMPTS, ENGINE_MAX_NEW,
                                lambda step: [jax.random.fold_in(k, step) for k in request_keys], **knobs)
    for completion, (tokens, logp, _) in zip(served, expected):
        assert completion.tokens == tokens
        np.testing.assert_allclose(completion.logprobs, logp, atol=1e-5)
    if "stop_ids" in knobs:
        assert {c.finish_reason for c in served} == {"stop", "length"}
