"""Sampling knobs (temperature, top-k, top-p), the two log-probs of a draw, and prompt layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.rollout.prompts import (
    check_prompt_array,
    left_pad,
    next_power_of_two,
    prompt_layout,
    right_pad_bucket,
    right_padded_layout,
    round_up,
    span_layout,
)
from jaxrl_llm.rollout.sampling import SamplingKnobs, as_prng_key, first_argmax, process_logits, sample_tokens

# Probabilities 0.5, 0.3, 0.15, 0.05 (token order shuffled so sorting matters).
PROBS = np.array([0.15, 0.5, 0.05, 0.3])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))[None, :]
process = jax.jit(process_logits)
sample = jax.jit(sample_tokens)


def _kept(knobs):
    return np.isfinite(np.asarray(process(LOGITS, knobs)[0]))


def test_top_k_keeps_the_k_largest_logits():
    np.testing.assert_array_equal(_kept(SamplingKnobs.make(1.0, top_k=2)), [False, True, False, True])
    np.testing.assert_array_equal(_kept(SamplingKnobs.make(1.0, top_k=1)), [False, True, False, False])
    np.testing.assert_array_equal(_kept(SamplingKnobs.make(1.0, top_k=9)), [True] * 4)  # k > V: no-op


@pytest.mark.parametrize("top_p, kept", [
    (0.4, [False, True, False, False]),   # the best token is always kept
    (0.79, [False, True, False, True]),   # 0.5 + 0.3 reaches 0.79
    (0.9, [True, True, False, True]),     # 0.8 < 0.9: the third token is needed
    (1.0, [True, True, True, True]),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    np.testing.assert_array_equal(_kept(SamplingKnobs.make(1.0, top_p=top_p)), kept)


def test_top_p_applies_after_temperature():
    # At temperature 2 the probabilities flatten to ~[0.21, 0.39, 0.12, 0.30]: top-p 0.6 needs 2 tokens.
    out = process(LOGITS, SamplingKnobs.make(2.0, top_p=0.6))
    np.testing.assert_array_equal(np.isfinite(np.asarray(out[0])), [False, True, False, True])
    np.testing.assert_allclose(out[0, 1], LOGITS[0, 1] / 2, rtol=1e-6)


def test_draw_logprobs_raw_and_processed():
    keys = jax.random.split(jax.random.key(0), 512)
    logits = jnp.broadcast_to(LOGITS, (512, 4))
    draw = sample(keys, logits, SamplingKnobs.make(0.5, top_k=2))
    tokens = np.asarray(draw.token)
    assert set(tokens.tolist()) == {1, 3}
    np.testing.assert_allclose(draw.logprob, np.log(PROBS[tokens]), rtol=1e-5)
    # Processed distribution at T=0.5 over {0.5, 0.3}: p ∝ p_i^2.
    tempered = np.array([0.0, 0.25, 0.0, 0.09]) / 0.34
    np.testing.assert_allclose(draw.processed_logprob, np.log(tempered[tokens]), rtol=1e-5)
    assert abs((tokens == 1).mean() - tempered[1]) < 0.08


def test_greedy_is_argmax_with_zero_processed_logprob_and_top_k_one_matches_it():
    logits = jax.random.normal(jax.random.key(1), (16, 50)) * 3
    keys = jax.random.split(jax.random.key(2), 16)
    greedy = sample(keys, logits, SamplingKnobs.make(0.0))
    np.testing.assert_array_equal(greedy.token, jnp.argmax(logits, -1))
    np.testing.assert_array_equal(greedy.processed_logprob, 0.0)
    np.testing.assert_allclose(greedy.logprob, jnp.max(jax.nn.log_softmax(logits), -1), rtol=1e-6)
    top1 = sample(keys, logits, SamplingKnobs.make(1.3, top_k=1))
    np.testing.assert_array_equal(top1.token, greedy.token)
    np.testing.assert_allclose(top1.processed_logprob, 0.0, atol=1e-6)


def test_first_argmax_equals_jnp_argmax_with_ties_and_masked_columns():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(64, 37)).astype(np.float32)  # many ties: the first index must win
    x[:5] = -np.inf
    x[:5, 7] = 1.0
    x[5] = 2.0  # a constant row: index 0
    got = np.asarray(first_argmax(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32 and got[5] == 0 and (got[:5] == 7).all()


@pytest.mark.parametrize("knobs", [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                                   dict(temperature=0.0)])
def test_draws_equal_jax_random_categorical(knobs):
    # The previous path: jnp.where(greedy, argmax, vmap(jax.random.categorical)) computed both.
    logits = jax.random.normal(jax.random.PRNGKey(1), (32, 50)) * 3
    logits = logits.at[:, 10:20].set(-jnp.inf)
    keys = jax.random.split(jax.random.key(3), 32)
    k = SamplingKnobs.make(**knobs)
    drawn = jax.jit(sample_tokens)(keys, logits, k).token
    ref = jax.vmap(jax.random.categorical)(keys, process_logits(logits, k))
    ref = jnp.where(k.temperature <= 0, jnp.argmax(logits, axis=-1), ref)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(ref))
    assert not np.isin(np.asarray(drawn), np.arange(10, 20)).any()


def test_row_draws_depend_only_on_the_row_key():
    logits = jax.random.normal(jax.random.key(3), (6, 40))
    keys = jax.random.split(jax.random.key(4), 6)
    knobs = SamplingKnobs.make(1.0)
    full = sample(keys, logits, knobs).token
    part = sample(keys[2:5], logits[2:5], knobs).token
    np.testing.assert_array_equal(full[2:5], part)


def test_bad_knobs_and_keys_name_the_argument():
    with pytest.raises(ValueError, match="temperature"):
        SamplingKnobs.make(-1.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingKnobs.make(1.0, top_k=-2)
    with pytest.raises(ValueError, match="top_p"):
        SamplingKnobs.make(1.0, top_p=0.0)
    with pytest.raises(ValueError, match=r"keys must be \[B\]"):
        sample_tokens(jax.random.split(jax.random.key(0), 3), LOGITS, SamplingKnobs.make())
    with pytest.raises(ValueError, match="key must be"):
        as_prng_key(jnp.zeros((3,), jnp.uint32))
    assert as_prng_key(jax.random.PRNGKey(0)).shape == ()


def test_left_pad_buckets_and_layout():
    tokens, lengths = left_pad([[5, 6, 7], [9]], pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 9]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert [round_up(n, 16) for n in (1, 16, 17)] == [16, 16, 32]
    assert [next_power_of_two(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    positions, segments = prompt_layout(jnp.asarray(lengths), 4)
    np.testing.assert_array_equal(positions, [[0, 0, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(segments, [[0, 1, 1, 1], [0, 0, 0, 1]])
    wide, _ = left_pad([[5, 6, 7], [9]], length=5, pad_id=1)
    np.testing.assert_array_equal(wide, [[1, 1, 5, 6, 7], [1, 1, 1, 1, 9]])


def test_span_layout_is_left_padding_right_padding_and_rollout_rows():
    # Row 0: a 2-token prompt in columns 1-2, then 2 generated tokens (3-4), then response padding.
    positions, segments = span_layout(jnp.array([1, 0]), jnp.array([5, 2]), 6)
    np.testing.assert_array_equal(positions, [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(segments, [[0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    positions, segments = right_padded_layout(jnp.array([3]), 5)  # the engine's prefill
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(segments, [[1, 1, 1, 0, 0]])


def test_bad_prompts_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []])
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        check_prompt_array(np.zeros((2, 3), np.int32), np.ones(3, np.int32), 10)
    with pytest.raises(ValueError, match=r"vocab_size=10\); got 12 at row 1, column 2"):
        check_prompt_array(np.array([[0, 1, 2], [0, 0, 12]]), np.array([3, 1]), 10)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, P=3\]"):
        check_prompt_array(np.zeros((1, 3), np.int32), np.array([4]), 10)


def test_right_pad_bucket_rounds_to_a_power_of_two_within_the_prefill_limit():
    np.testing.assert_array_equal(right_pad_bucket([4, 5, 6], 32, pad_id=1), [4, 5, 6] + [1] * 13)
    assert right_pad_bucket(list(range(20)), 24).shape == (24,)  # 32 capped at the limit
    with pytest.raises(ValueError, match="max_prefill_length is 4"):
        right_pad_bucket([1, 2, 3, 4, 5], 4)
