"""The KV-cache sampler against full (no-cache) forwards, stop ids, keys, buckets and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, functional, preset
from jaxrl_llm.parallel import logical_to_sharding, make_mesh
from jaxrl_llm.rollout import FINISH_LENGTH, FINISH_STOP, SamplingConfig, generate, learner_logprobs
from jaxrl_llm.rollout import sampler as sampler_module

CFG = preset("tiny")
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
N_NEW = 6
forward = jax.jit(functional.forward, static_argnums=0)
score = jax.jit(learner_logprobs, static_argnums=0)


@pytest.fixture(scope="module")
def model():
    graphdef, params = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    # Larger-than-init weights give peaked next-token distributions (no near-ties for argmax).
    params = jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, params)
    return graphdef, params


@pytest.fixture(scope="module")
def greedy(model):
    return generate(*model, PROMPTS, key=jax.random.key(0), config=SamplingConfig(N_NEW, temperature=0.0))


def _full_forward_argmax(graphdef, params, prompts, steps):
    """Greedy continuation by re-running the whole sequence (no cache) each step.

    Rows are right-padded to a fixed width with segment 0, which causal attention never sees.
    """
    width = max(map(len, prompts)) + steps
    seqs = [list(p) for p in prompts]
    logps = []
    for _ in range(steps):
        tokens = np.zeros((len(seqs), width), np.int32)
        segments = np.zeros_like(tokens)
        for i, s in enumerate(seqs):
            tokens[i, :len(s)], segments[i, :len(s)] = s, 1
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
        logits, _ = forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(positions),
                            segment_ids=jnp.asarray(segments))
        last = jax.nn.log_softmax(logits[np.arange(len(seqs)), [len(s) - 1 for s in seqs]], axis=-1)
        nxt = np.asarray(jnp.argmax(last, -1))
        logps.append(np.asarray(last)[np.arange(len(seqs)), nxt])
        for s, t in zip(seqs, nxt):
            s.append(int(t))
    return np.array([s[len(p):] for s, p in zip(seqs, prompts)]), np.stack(logps, 1)


def test_greedy_equals_step_by_step_argmax_of_full_forward(model, greedy):
    expected, expected_logp = _full_forward_argmax(*model, PROMPTS, N_NEW)
    np.testing.assert_array_equal(greedy.response, expected)
    np.testing.assert_allclose(greedy.logprobs, expected_logp, atol=1e-5)
    np.testing.assert_array_equal(greedy.processed_logprobs, 0.0)
    np.testing.assert_array_equal(greedy.lengths, [N_NEW] * 3)
    np.testing.assert_array_equal(greedy.finish_reasons, [FINISH_LENGTH] * 3)
    # tokens = left-padded prompt then response.
    assert greedy.tokens.shape == (3, 5 + N_NEW)
    np.testing.assert_array_equal(greedy.tokens[1, :5], [0, 0, 0, 3, 4])
    np.testing.assert_array_equal(greedy.tokens[:, 5:], greedy.response)


def test_sampled_logprobs_equal_full_forward_logprobs(model):
    config = SamplingConfig(N_NEW, temperature=1.0, top_p=0.95, n=2)
    rollout = generate(*model, PROMPTS, key=jax.random.key(1), config=config)
    assert rollout.response.shape == (6, N_NEW)
    recomputed = score(*model, rollout)
    np.testing.assert_allclose(rollout.logprobs, recomputed, atol=1e-5)
    assert np.all(np.asarray(rollout.processed_logprobs) >= np.asarray(rollout.logprobs) - 1e-6)  # truncation
    # n samples of the same prompt differ; same key, same samples; another key, other samples.
    response = np.asarray(rollout.response)
    assert all(not np.array_equal(response[2 * b], response[2 * b + 1]) for b in range(3))
    again = generate(*model, PROMPTS, key=jax.random.key(1), config=config)
    np.testing.assert_array_equal(again.response, response)
    other = generate(*model, PROMPTS, key=jax.random.key(2), config=config)
    assert not np.array_equal(other.response, response)


def test_top_k_one_equals_greedy(model, greedy):
    top1 = generate(*model, PROMPTS, key=jax.random.key(5), config=SamplingConfig(N_NEW, temperature=0.7, top_k=1))
    np.testing.assert_array_equal(top1.response, greedy.response)


def test_stop_ids_end_rows_and_set_finish_reasons(model, greedy):
    response = np.asarray(greedy.response)
    stop = int(response[0, 2])
    rollout = generate(*model, PROMPTS, key=jax.random.key(0),
                       config=SamplingConfig(N_NEW, temperature=0.0, stop_ids=(stop,), pad_id=127))
    for row in range(3):
        hits = np.flatnonzero(response[row] == stop)
        length = int(hits[0]) + 1 if hits.size else N_NEW
        assert int(rollout.lengths[row]) == length
        assert int(rollout.finish_reasons[row]) == (FINISH_STOP if hits.size else FINISH_LENGTH)
        np.testing.assert_array_equal(rollout.response[row, :length], response[row, :length])
        np.testing.assert_array_equal(rollout.response[row, length:], 127)
        np.testing.assert_array_equal(rollout.response_mask[row], np.arange(N_NEW) < length)
        np.testing.assert_array_equal(rollout.logprobs[row, length:], 0.0)
    assert int(rollout.lengths[0]) == 3


def test_array_prompts_and_buckets_reuse_one_compile(model, greedy):
    tokens = np.array([[0, 5, 6, 7, 8, 9], [0, 0, 0, 0, 3, 4], [0, 0, 0, 10, 11, 12]], np.int32)
    before = sampler_module._decode_jit._cache_size()
    rollout = generate(*model, tokens, lengths=np.array([5, 2, 3]), key=jax.random.key(0),
                       config=SamplingConfig(N_NEW, temperature=0.0))
    np.testing.assert_array_equal(rollout.response, greedy.response)
    shorter = generate(*model, [[1, 2], [3], [4, 5, 6, 7]], key=jax.random.key(0),
                       config=SamplingConfig(N_NEW - 2, temperature=0.0))
    assert shorter.response.shape == (3, N_NEW - 2) and shorter.tokens.shape == (3, 4 + N_NEW - 2)
    # Prompt widths 5 and 4 share a bucket and max_new_tokens 6 and 4 share one: nothing new compiled.
    assert sampler_module._decode_jit._cache_size() == before


def test_sharded_sampler_equals_unsharded(model):
    graphdef, params = model
    mesh = make_mesh(data=2, fsdp=4)

    def place(variable):
        value = variable.get_value()
        names = variable.get_metadata().get("out_sharding")
        return variable.replace(jax.device_put(value, logical_to_sharding(names, mesh, shape=value.shape)))

    sharded = jax.tree.map(place, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert sharded["embed"].get_value().sharding.spec != jax.sharding.PartitionSpec()
    config = SamplingConfig(N_NEW, temperature=1.0, n=2)
    ref = generate(graphdef, params, PROMPTS, key=jax.random.key(3), config=config)
    out = generate(graphdef, sharded, PROMPTS, key=jax.random.key(3), config=config, mesh=mesh)
    assert len(out.response.sharding.device_set) == 8
    np.testing.assert_array_equal(out.response, ref.response)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
    np.testing.assert_array_equal(out.finish_reasons, ref.finish_reasons)


def test_bad_inputs_name_the_argument(model):
    config = SamplingConfig(4)
    with pytest.raises(ValueError, match="lengths"):
        generate(*model, np.zeros((2, 3), np.int32), key=jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="vocab_size=128"):
        generate(*model, [[1, 200]], key=jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(0)
    with pytest.raises(ValueError, match="SamplingConfig.n"):
        SamplingConfig(4, n=0)
