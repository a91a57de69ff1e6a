"""Hybrid decoders: every delta-rule layer type next to attention, cached prefill + decode against the
full forward, padding that never reaches the state, kernel implementations, and the rollout sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, functional, init_cache, preset
from jaxrl_llm.models.hybrid import DeltaCache
from jaxrl_llm.rollout.sampler import SamplingConfig, generate

LAYER_TYPES = ("gated_deltanet", "kda", "fg2_gdn", "fg2_gdn_plus", "attention")
DELTA_LAYERS = range(4)
forward = jax.jit(functional.forward, static_argnums=0)
B, WIDTH, PREFILL = 3, 13, 10  # reference width; prefill columns before one-token decode steps


@pytest.fixture(scope="module")
def model():
    # chunk 8 < prompt lengths, so the chunked kernel crosses chunk boundaries with a carried state.
    config = preset("hybrid-tiny", num_layers=5, layer_types=LAYER_TYPES, delta_chunk_size=8, delta_impl="chunked")
    model = Decoder(config, rngs=nnx.Rngs(0))
    # Larger-than-init weights so that state or padding mistakes move the logits visibly.
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda p: p * 4.0 if p.ndim == 2 else p, params)
    return graphdef, params


def _sequences(lengths, seed):
    rng = np.random.RandomState(seed)
    return [rng.randint(1, 128, n) for n in lengths]


def _left_padded(seqs, width):
    """tokens, positions, segment_ids `[B, width]` with each sequence right-aligned (garbage padding)."""
    tokens = np.random.RandomState(99).randint(1, 128, (len(seqs), width))
    positions = np.zeros((len(seqs), width), np.int32)
    segments = np.zeros((len(seqs), width), np.int32)
    for b, s in enumerate(seqs):
        tokens[b, width - len(s):] = s
        positions[b, width - len(s):] = np.arange(len(s))
        segments[b, width - len(s):] = 1
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(positions), jnp.asarray(segments)


def _reference(graphdef, params, seqs):
    """Full-forward logits `[B, WIDTH, V]` of the left-padded sequences and where they are real."""
    tokens, positions, segments = _left_padded(seqs, WIDTH)
    logits, _ = forward(graphdef, params, tokens, positions, segment_ids=segments)
    assert np.all(np.isfinite(np.asarray(logits)))
    return np.asarray(logits), np.asarray(segments)


def test_left_padded_prefill_then_decode_matches_full_forward(model):
    graphdef, params = model
    seqs = _sequences([13, 9, 5], seed=0)
    ref, segments = _reference(graphdef, params, seqs)
    tokens, positions, segs = _left_padded(seqs, WIDTH)
    cache = init_cache(graphdef_config(graphdef, params), B, WIDTH)
    got, cache = forward(graphdef, params, tokens[:, :PREFILL], positions[:, :PREFILL], segment_ids=segs[:, :PREFILL],
                         cache=cache)
    steps = [np.asarray(got)]
    for col in range(PREFILL, WIDTH):
        logits, cache = forward(graphdef, params, tokens[:, col:col + 1], positions[:, col:col + 1],
                                segment_ids=segs[:, col:col + 1], cache=cache)
        steps.append(np.asarray(logits))
    got = np.concatenate(steps, axis=1)
    real = segments.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=2e-5, rtol=0)
    assert all(isinstance(cache.layers[i], DeltaCache) for i in DELTA_LAYERS)


def test_right_padded_chunked_prefill_then_decode_matches_full_forward(model):
    """Serving-engine layout: prompts right-padded, prefilled in two chunks (one all padding for the
    shortest row), then decoded; the state must skip the trailing padding."""
    graphdef, params = model
    prompt_lengths, new = [10, 6, 3], 3
    seqs = _sequences([n + new for n in prompt_lengths], seed=1)
    ref, segments = _reference(graphdef, params, seqs)
    tokens = np.random.RandomState(5).randint(1, 128, (B, PREFILL))
    segs = np.zeros((B, PREFILL), np.int32)
    for b, n in enumerate(prompt_lengths):
        tokens[b, :n], segs[b, :n] = seqs[b][:n], 1
    positions = np.broadcast_to(np.arange(PREFILL), (B, PREFILL))
    cache = init_cache(graphdef_config(graphdef, params), B, WIDTH)
    prompt_logits = []
    for cols in (slice(0, 5), slice(5, PREFILL)):
        logits, cache = forward(graphdef, params, jnp.asarray(tokens[:, cols], jnp.int32),
                                jnp.asarray(positions[:, cols], jnp.int32), segment_ids=jnp.asarray(segs[:, cols]),
                                cache=cache)
        prompt_logits.append(np.asarray(logits))
    prompt_logits = np.concatenate(prompt_logits, axis=1)
    for b, n in enumerate(prompt_lengths):
        start = WIDTH - len(seqs[b])
        np.testing.assert_allclose(prompt_logits[b, :n], ref[b, start:start + n], atol=2e-5, rtol=0)
    for step in range(new):
        token = jnp.asarray([[s[n + step]] for s, n in zip(seqs, prompt_lengths)], jnp.int32)
        position = jnp.asarray([[n + step] for n in prompt_lengths], jnp.int32)
        logits, cache = forward(graphdef, params, token, position, segment_ids=jnp.ones((B, 1), jnp.int32),
                                cache=cache)
        want = ref[:, WIDTH - new + step]
        np.testing.assert_allclose(np.asarray(logits)[:, 0], want, atol=2e-5, rtol=0)


def test_padding_never_reaches_the_state(model):
    """One sequence behind left, right and split padding of different garbage tokens: identical state."""
    graphdef, params = model
    (s,) = _sequences([5], seed=2)
    garbage = np.random.RandomState(3).randint(1, 128, (B, PREFILL))
    tokens, segs = garbage.copy(), np.zeros((B, PREFILL), np.int32)
    for b, start in enumerate((5, 0, 2)):
        tokens[b, start:start + 5], segs[b, start:start + 5] = s, 1
    positions = np.maximum(np.cumsum(segs, axis=1) - 1, 0)
    cache = init_cache(graphdef_config(graphdef, params), B, WIDTH)
    _, cache = forward(graphdef, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
                       segment_ids=jnp.asarray(segs), cache=cache)
    for i in DELTA_LAYERS:
        layer = cache.layers[i]
        assert np.abs(np.asarray(layer.recurrent)).max() > 1e-3 and np.abs(np.asarray(layer.conv)).max() > 1e-3
        for field in ("conv", "recurrent"):
            value = np.asarray(getattr(layer, field))
            np.testing.assert_allclose(value[1:], np.broadcast_to(value[:1], value[1:].shape), atol=1e-6, rtol=0,
                                       err_msg=f"layer {i} {field}")
        np.testing.assert_array_equal(np.asarray(layer.last_segment), [1, 1, 1])
    # Decoding on from the three layouts gives one answer.
    logits, _ = forward(graphdef, params, jnp.full((B, 1), 7, jnp.int32), jnp.full((B, 1), 5, jnp.int32),
                        segment_ids=jnp.ones((B, 1), jnp.int32), cache=cache)
    logits = np.asarray(logits)
    np.testing.assert_allclose(logits[1:], np.broadcast_to(logits[:1], logits[1:].shape), atol=2e-5, rtol=0)


def test_chunked_and_recurrent_kernels_give_the_same_logits(model):
    graphdef, params = model
    seqs = _sequences([13, 9, 5], seed=4)
    chunked, segments = _reference(graphdef, params, seqs)
    config = graphdef_config(graphdef, params).replace(delta_impl="recurrent")
    recurrent_graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    recurrent, _ = _reference(recurrent_graphdef, params, seqs)
    real = segments.astype(bool)
    np.testing.assert_allclose(recurrent[real], chunked[real], atol=2e-5, rtol=0)


def test_rollout_sampler_log_probs_match_a_full_forward(model):
    """`rollout.generate` runs unchanged on a hybrid model: its per-token log-probs equal a teacher-forced
    full forward over the sampled tokens (ragged, left-padded prompts)."""
    graphdef, params = model
    prompts = [list(s) for s in _sequences([6, 2], seed=6)]
    rollout = generate(graphdef, params, prompts, key=jax.random.key(0),
                       config=SamplingConfig(max_new_tokens=4, temperature=1.0, prompt_bucket=8))
    tokens = np.asarray(rollout.tokens)
    width = rollout.prompt_width
    lengths = np.asarray(rollout.prompt_lengths)
    segments = np.zeros(tokens.shape, np.int32)
    for b, n in enumerate(lengths):
        segments[b, width - n:] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
    logits, _ = forward(graphdef, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
                        segment_ids=jnp.asarray(segments))
    logp = jax.nn.log_softmax(np.asarray(logits)[:, width - 1:-1], axis=-1)
    want = np.take_along_axis(np.asarray(logp), tokens[:, width:, None], axis=-1)[..., 0]
    assert np.asarray(rollout.response_mask).all()
    np.testing.assert_allclose(np.asarray(rollout.logprobs), want, atol=5e-5, rtol=0)


def graphdef_config(graphdef, params):
    return nnx.merge(graphdef, params).config
