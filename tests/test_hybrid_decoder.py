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
B, WIDTH, CHUNK = 3, 13, 5  # reference width; prefill = two chunks of CHUNK columns, then one-token steps
PREFILL = 2 * CHUNK


def _random_value(path, shape, rng):
    """Test weights away from the init (zero norms, tiny projections), so mistakes move the logits."""
    name = path[-1]
    if name == "A_log":
        return np.log(rng.uniform(0.3, 3.0, shape))
    if name == "norm":  # the delta layers' gated output norm (not zero-centred)
        return 1 + 0.3 * rng.standard_normal(shape)
    if len(shape) == 2 and name not in ("embed", "conv1d"):
        return rng.standard_normal(shape) / np.sqrt(shape[0])
    return (0.5 if name == "conv1d" else 0.3 if name != "embed" else 1.0) * rng.standard_normal(shape)


@pytest.fixture(scope="module")
def model():
    # chunk 8 < prompt lengths, so the chunked kernel crosses chunk boundaries with a carried state.
    config = preset("hybrid-tiny", num_layers=5, layer_types=LAYER_TYPES, delta_chunk_size=8, delta_impl="chunked")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    rng = np.random.RandomState(0)
    flat = [(path, v.replace(jnp.asarray(_random_value(path, v.get_value().shape, rng), jnp.float32)))
            for path, v in nnx.to_flat_state(abstract)]
    return graphdef, nnx.from_flat_state(flat), config


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
    return tokens, positions, segments


def _forward(graphdef, params, tokens, positions, segments, cache=None):
    as_int = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
    logits, cache = forward(graphdef, params, as_int(tokens), as_int(positions), segment_ids=as_int(segments),
                            cache=cache)
    return np.asarray(logits), cache


def _reference(graphdef, params, seqs):
    """Full-forward logits `[B, WIDTH, V]` of the left-padded sequences and where they are real."""
    tokens, positions, segments = _left_padded(seqs, WIDTH)
    logits, _ = _forward(graphdef, params, tokens, positions, segments)
    assert np.all(np.isfinite(logits))
    return logits, segments.astype(bool)


def _prefill(graphdef, params, config, tokens, positions, segments):
    """Two CHUNK-column prefill calls into a fresh cache; logits `[B, PREFILL, V]` and the cache."""
    cache = init_cache(config, B, WIDTH)
    logits = []
    for cols in (slice(0, CHUNK), slice(CHUNK, PREFILL)):
        chunk, cache = _forward(graphdef, params, tokens[:, cols], positions[:, cols], segments[:, cols], cache)
        logits.append(chunk)
    return np.concatenate(logits, axis=1), cache


def test_left_padded_prefill_then_decode_matches_full_forward(model):
    """Sampler layout: ragged prompts left-padded with garbage tokens, chunked prefill, then decode."""
    graphdef, params, config = model
    seqs = _sequences([13, 9, 5], seed=0)
    ref, real = _reference(graphdef, params, seqs)
    tokens, positions, segments = _left_padded(seqs, WIDTH)
    logits, cache = _prefill(graphdef, params, config, tokens, positions, segments)
    steps = [logits]
    for col in range(PREFILL, WIDTH):
        step, cache = _forward(graphdef, params, tokens[:, col:col + 1], positions[:, col:col + 1],
                               segments[:, col:col + 1], cache)
        steps.append(step)
    got = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(got[real], ref[real], atol=5e-5, rtol=0)
    assert all(isinstance(cache.layers[i], DeltaCache) for i in DELTA_LAYERS)


def test_right_padded_chunked_prefill_then_decode_matches_full_forward(model):
    """Serving-engine layout: prompts right-padded (the shortest row's second chunk is all padding),
    then decoded; the carried state must skip the trailing padding."""
    graphdef, params, config = model
    prompt_lengths, new = [10, 6, 3], 3
    seqs = _sequences([n + new for n in prompt_lengths], seed=1)
    ref, _ = _reference(graphdef, params, seqs)
    tokens = np.random.RandomState(5).randint(1, 128, (B, PREFILL))
    segments = np.zeros((B, PREFILL), np.int32)
    for b, n in enumerate(prompt_lengths):
        tokens[b, :n], segments[b, :n] = seqs[b][:n], 1
    positions = np.broadcast_to(np.arange(PREFILL), (B, PREFILL))
    logits, cache = _prefill(graphdef, params, config, tokens, positions, segments)
    for b, n in enumerate(prompt_lengths):
        start = WIDTH - len(seqs[b])
        np.testing.assert_allclose(logits[b, :n], ref[b, start:start + n], atol=5e-5, rtol=0)
    for step in range(new):
        token = [[s[n + step]] for s, n in zip(seqs, prompt_lengths)]
        position = [[n + step] for n in prompt_lengths]
        logits, cache = _forward(graphdef, params, token, position, np.ones((B, 1)), cache)
        np.testing.assert_allclose(logits[:, 0], ref[:, WIDTH - new + step], atol=5e-5, rtol=0)


def test_padding_never_reaches_the_state(model):
    """One sequence behind left, right and split padding of garbage tokens leaves identical states."""
    graphdef, params, config = model
    (s,) = _sequences([5], seed=2)
    tokens = np.random.RandomState(3).randint(1, 128, (B, PREFILL))
    segments = np.zeros((B, PREFILL), np.int32)
    for b, start in enumerate((5, 0, 2)):
        tokens[b, start:start + 5], segments[b, start:start + 5] = s, 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
    _, cache = _prefill(graphdef, params, config, tokens, positions, segments)
    for i in DELTA_LAYERS:
        layer = cache.layers[i]
        for field in ("conv", "recurrent"):
            value = np.asarray(getattr(layer, field))
            assert np.abs(value).max() > 1e-2, f"layer {i} {field} is empty"
            np.testing.assert_allclose(value[1:], np.broadcast_to(value[:1], value[1:].shape), atol=1e-5, rtol=0,
                                       err_msg=f"layer {i} {field}")
        np.testing.assert_array_equal(np.asarray(layer.last_segment), [1, 1, 1])
    logits, _ = _forward(graphdef, params, np.full((B, 1), 7), np.full((B, 1), 5), np.ones((B, 1)), cache)
    np.testing.assert_allclose(logits[1:], np.broadcast_to(logits[:1], logits[1:].shape), atol=5e-5, rtol=0)


def test_chunked_and_recurrent_kernels_give_the_same_logits(model):
    graphdef, params, config = model
    seqs = _sequences([13, 9, 5], seed=4)
    chunked, real = _reference(graphdef, params, seqs)
    recurrent_config = config.replace(delta_impl="recurrent")
    recurrent_graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(recurrent_config, rngs=nnx.Rngs(0))))
    recurrent, _ = _reference(recurrent_graphdef, params, seqs)
    assert np.abs(chunked[real]).max() > 1.0
    np.testing.assert_allclose(recurrent[real], chunked[real], atol=1e-4, rtol=0)


def test_rollout_sampler_log_probs_match_a_full_forward(model):
    """`rollout.generate` runs unchanged on a hybrid model: its per-token log-probs equal a teacher-forced
    full forward over the sampled tokens (ragged, left-padded prompts)."""
    graphdef, params, _ = model
    prompts = [list(s) for s in _sequences([9, 5, 2], seed=6)]
    rollout = generate(graphdef, params, prompts, key=jax.random.key(0),
                       config=SamplingConfig(max_new_tokens=4, temperature=1.0, prompt_bucket=8))
    tokens = np.asarray(rollout.tokens)
    assert tokens.shape == (B, WIDTH) and np.asarray(rollout.response_mask).all()
    seqs = [t[WIDTH - n - 4:] for t, n in zip(tokens, np.asarray(rollout.prompt_lengths))]
    logits, _ = _reference(graphdef, params, seqs)
    logp = jax.nn.log_softmax(logits[:, WIDTH - 5:-1], axis=-1)
    want = np.take_along_axis(np.asarray(logp), tokens[:, WIDTH - 4:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(rollout.logprobs), want, atol=5e-5, rtol=0)
