"""Chunked delta rule: the per-channel decay score paths (one-reference and pairwise) and their switch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.kernels.delta_rule import chunked, delta_rule
from jaxrl_llm.kernels.delta_rule.recurrent import recurrent_unified

B, T, H, K, V, C = 1, 40, 2, 8, 8, 16


def _float64_unified(q, r, e, u, g, state):
    """Per-token unified recurrence in float64: S <- D S; S += e (u - r^T S)^T; o = S^T q."""
    q, r, e, u, g, s = (np.asarray(x, np.float64) for x in (q, r, e, u, g, state))
    out = np.zeros(q.shape[:3] + (u.shape[-1],))
    for t in range(q.shape[1]):
        s = s * np.exp(g[:, t])[..., None]
        pred = np.einsum("bhk,bhkv->bhv", r[:, t], s)
        s = s + e[:, t, ..., None] * (u[:, t] - pred)[..., None, :]
        out[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], s)
    return out, s


def _inputs(decay_shift, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    beta = 1 / (1 + np.exp(-f(B, T, H, 1)))
    k = unit(f(B, T, H, K))
    g = -np.log1p(np.exp(-(f(B, T, H, K) + decay_shift)))  # log_sigmoid
    return (unit(f(B, T, H, K)) * K**-0.5, beta * k, k, beta * f(B, T, H, V), g.astype(np.float32),
            0.3 * f(B, H, K, V))


@functools.lru_cache(maxsize=None)
def _chunked():
    return jax.jit(functools.partial(chunked.chunked_unified, chunk_size=C))


@pytest.mark.parametrize("decay_shift", [3.0, -4.0])
def test_matches_float64_for_weak_and_strong_per_channel_decay(decay_shift):
    # shift 3: span per chunk ~1 (reference scores); shift -4: span ~65 per chunk (pairwise scores).
    args = _inputs(decay_shift)
    span = float(chunked.chunk_decay_span(jnp.asarray(args[4]), C))
    assert (span <= chunked.REFERENCE_SPAN_LIMIT) == (decay_shift > 0)
    o, s = _chunked()(*map(jnp.asarray, args))
    o_ref, s_ref = _float64_unified(*args)
    np.testing.assert_allclose(o, o_ref, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(s, s_ref, atol=2e-5, rtol=1e-4)


def test_strong_decay_gradients_are_finite_and_match_recurrent():
    args = tuple(map(jnp.asarray, _inputs(-4.0)))

    def loss(fn, *a):
        o, s = fn(*a)
        return jnp.sum(o * jnp.cos(o)) + jnp.sum(s)

    grads = jax.grad(functools.partial(loss, _chunked()), argnums=(0, 1, 2, 3, 4))(*args)
    want = jax.grad(functools.partial(loss, jax.jit(recurrent_unified)), argnums=(0, 1, 2, 3, 4))(*args)
    for got, ref in zip(grads, want):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("method", ["reference", "pairwise"])
def test_score_methods_equal_the_direct_sum(method):
    rng = np.random.default_rng(1)
    a, e = rng.standard_normal((2, 3, C, K))
    big_g = np.cumsum(-rng.uniform(0, 2.0, (3, C, K)), axis=-2)  # span up to ~32 < limit
    direct = np.einsum("nik,njk,nijk->nij", a, e, np.exp(big_g[:, :, None] - big_g[:, None]))
    direct = np.tril(direct)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    p, low = chunked._query_and_key_scores(f32(a), f32(a), f32(e), f32(big_g), method)
    np.testing.assert_allclose(p, direct, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(low, direct, atol=1e-4, rtol=1e-4)


def test_chunk_decay_span_bounds_the_in_chunk_span():
    rng = np.random.default_rng(2)
    g = jnp.asarray(-rng.uniform(0, 3.0, (1, 2 * C, 1, K)), jnp.float32)
    big_g = jnp.cumsum(chunked._to_chunks(g, C), axis=-2)
    assert float(chunked.decay_span(big_g)) <= float(chunked.chunk_decay_span(g, C)) + 1e-5


def test_public_api_uses_the_chunked_path_with_strong_decay():
    q, r, e, u, g, s0 = _inputs(-4.0)
    beta = np.ones((B, T, H), np.float32)
    o, _ = delta_rule(q / K**-0.5, e, u, g, beta, initial_state=s0, impl="chunked", chunk_size=C)
    np.testing.assert_allclose(o, _float64_unified(q, e, e, u, g, s0)[0], atol=2e-5, rtol=1e-4)


def test_bad_score_method_is_rejected_by_name():
    x = jnp.zeros((B, T, H, K))
    with pytest.raises(ValueError, match="scores must be one of"):
        chunked.prepare_chunks(x, x, x, x, x, None, C, "fast")


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("scores", ["reference", "pairwise"])
def test_streamed_and_two_phase_schedules_agree_with_packing_and_padding(per_channel, scores):
    # T = 40 is not a multiple of C = 16; sequence starts fall mid-chunk and on a chunk boundary.
    q, r, e, u, g, s0 = map(jnp.asarray, _inputs(3.0, seed=5))
    g = g if per_channel else g[..., :1]
    reset = jnp.zeros((B, T), bool).at[:, [7, 16, 33]].set(True)
    run = lambda fn: jax.jit(functools.partial(fn, reset=reset, chunk_size=C, scores=scores))(  # noqa: E731
        q, r, e, u, g, s0)
    (o_stream, s_stream), (o_two, s_two) = run(chunked.streamed_chunks), run(chunked.two_phase_chunks)
    np.testing.assert_allclose(o_stream, o_two, atol=1e-6)
    np.testing.assert_allclose(s_stream, s_two, atol=1e-6)
    # Both equal the recurrent reference, which zeroes the state at every start.
    o_rec, s_rec = recurrent_unified(q, r, e, u, g, s0, reset)
    np.testing.assert_allclose(o_stream, o_rec, atol=2e-5)
    np.testing.assert_allclose(s_stream, s_rec, atol=2e-5)


def test_forward_mode_derivative_matches_recurrent():
    q, r, e, u, g, s0 = map(jnp.asarray, _inputs(3.0, seed=6))
    tangents = tuple(0.1 * jnp.ones_like(x) for x in (q, r, e, u, g, s0))
    chunk = lambda *x: chunked.chunked_unified(*x, chunk_size=C)  # noqa: E731
    (o, s), (do, ds) = jax.jvp(chunk, (q, r, e, u, g, s0), tangents)
    (o_ref, s_ref), (do_ref, ds_ref) = jax.jvp(recurrent_unified, (q, r, e, u, g, s0), tangents)
    np.testing.assert_allclose(o, o_ref, atol=2e-5)
    np.testing.assert_allclose(do, do_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ds, ds_ref, atol=1e-4, rtol=1e-4)
