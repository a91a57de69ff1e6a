"""The slot engine and continuous batching: interleaving never changes a request's tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, preset
from jaxrl_llm.quant import QuantArray
from jaxrl_llm.rollout import DecodeEngine, EngineAPI, Request, SamplingConfig, generate, serve
from jaxrl_llm.rollout import engine as engine_module

CFG = preset("tiny")
# The first three prompts are those of test_rollout_sampler.py, so the batch sampler's program is shared.
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12], [13]]
MAX_NEW = [6, 3, 5, 4]
ENGINE = dict(max_concurrent_decodes=2, max_prefill_length=16, max_target_length=32)


@pytest.fixture(scope="module")
def params():
    _, state = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    return jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, state)


@pytest.fixture(scope="module")
def sampling_engine():
    return DecodeEngine(CFG, temperature=1.0, **ENGINE)


def _requests(seeds=None):
    return [Request(p, n, seed=None if seeds is None else seeds[i]) for i, (p, n) in enumerate(zip(PROMPTS, MAX_NEW))]


def test_engine_implements_the_engine_interface(sampling_engine):
    assert isinstance(sampling_engine, EngineAPI)
    assert sampling_engine.max_concurrent_decodes == 2 and sampling_engine.max_prefill_length == 16
    state = sampling_engine.init_decode_state()
    assert state.caches.layers[0].k.shape == (2, 1, CFG.num_kv_heads, 32, CFG.head_dim)
    assert state.caches.index.shape == (2,)
    quantized = DecodeEngine(CFG, quant_format="int8", **ENGINE).load_params(Decoder(CFG, rngs=nnx.Rngs(0)))
    assert isinstance(quantized["layers"][0]["mlp"]["up_proj"].get_value(), QuantArray)


def test_interleaved_requests_give_the_same_tokens_as_each_alone(sampling_engine, params):
    together = serve(sampling_engine, params, _requests())  # 4 requests through 2 slots
    alone = [serve(sampling_engine, params, [r])[0] for r in _requests(seeds=range(4))]
    assert [c.tokens for c in together] == [c.tokens for c in alone]
    assert [len(c.tokens) for c in together] == MAX_NEW
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    # Different seeds draw different tokens at temperature 1.
    reseeded = serve(sampling_engine, params, _requests(seeds=range(10, 14)))
    assert [c.tokens for c in reseeded] != [c.tokens for c in together]


def test_greedy_serving_equals_the_batch_sampler(params):
    engine = DecodeEngine(CFG, temperature=0.0, **ENGINE)
    served = serve(engine, params, _requests())
    rollout = generate(engine.graphdef, params, PROMPTS[:3], key=jax.random.key(0),
                       config=SamplingConfig(6, temperature=0.0))
    for row, (completion, n) in enumerate(zip(served[:3], MAX_NEW)):
        np.testing.assert_array_equal(completion.tokens, rollout.response[row, :n])
        np.testing.assert_allclose(completion.logprobs, rollout.logprobs[row, :n], atol=1e-5)
        assert completion.finish_reason == "length"


def test_stop_ids_and_full_caches_free_their_slots(sampling_engine, params):
    reference = serve(sampling_engine, params, _requests())
    compiled = engine_module._generate_jit._cache_size()
    stop = reference[0].tokens[1]
    stopping = DecodeEngine(CFG, temperature=1.0, stop_ids=(stop,), **ENGINE)
    out = serve(stopping, params, _requests())
    assert engine_module._generate_jit._cache_size() == compiled  # stop ids are traced: no recompile
    assert out[0].tokens == reference[0].tokens[:2] and out[0].finish_reason == "stop"
    for got, ref in zip(out[1:], reference[1:]):  # other requests: cut at their first stop, if any
        cut = ref.tokens.index(stop) + 1 if stop in ref.tokens else len(ref.tokens)
        assert got.tokens == ref.tokens[:cut]
    # A 16-token prefill bucket in a 32-slot cache leaves room for 16 decode steps after the first token.
    full = serve(sampling_engine, params, [Request([1, 2, 3], 40)])[0]
    assert len(full.tokens) == 17 and full.finish_reason == "cache_full"


def test_prefill_and_insert_check_their_arguments(sampling_engine, params):
    with pytest.raises(ValueError, match="max_prefill_length=16"):
        sampling_engine.prefill(params, jnp.zeros((17,), jnp.int32), 3)
    with pytest.raises(ValueError, match="true_length"):
        sampling_engine.prefill(params, jnp.zeros((16,), jnp.int32), 0)
    prefix, first = sampling_engine.prefill(params, jnp.arange(16, dtype=jnp.int32), 4)
    assert int(prefix.position) == 4 and first.get_result_at_slot(0).tokens.shape == (1,)
    with pytest.raises(ValueError, match=r"slot must be in \[0, 2\)"):
        sampling_engine.insert(prefix, sampling_engine.init_decode_state(), 2)
    with pytest.raises(ValueError, match="max_prefill_length < max_target_length"):
        DecodeEngine(CFG, max_concurrent_decodes=1, max_prefill_length=8, max_target_length=8)
