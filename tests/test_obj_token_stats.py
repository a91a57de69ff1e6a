"""Chunked sampled-token log-prob / entropy from logits and from hidden states + lm_head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj

B, T, D, V = 2, 3, 4, 37  # V = 37 is not a multiple of the chunk: exercises the shifted last chunk


def inputs(seed=0, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    hidden = jax.random.normal(k1, (B, T, D), dtype)
    head = jax.random.normal(k2, (D, V), dtype)
    targets = jax.random.randint(k3, (B, T), 0, V)
    return hidden, head, targets


def weighted(stats, w_ent=0.7):
    logp, ent = stats
    return jnp.sum(logp * jnp.arange(1, logp.size + 1).reshape(logp.shape)) + w_ent * jnp.sum(ent)


@pytest.mark.parametrize("chunk", [8, 64])
def test_logits_stats_match_naive(chunk):
    hidden, head, targets = inputs()
    logits = hidden @ head
    fn = jax.jit(lambda l: obj.logits_token_stats(l, targets, chunk_size=chunk, temperature=0.8))
    for a, b in zip(fn(logits), obj.naive_token_stats(logits, targets, temperature=0.8)):
        np.testing.assert_allclose(a, b, atol=2e-6)
    g = jax.jit(jax.grad(lambda l: weighted(obj.logits_token_stats(l, targets, chunk_size=chunk, temperature=0.8))))
    g_ref = jax.grad(lambda l: weighted(obj.naive_token_stats(l, targets, temperature=0.8)))(logits)
    np.testing.assert_allclose(g(logits), g_ref, atol=1e-5)


def test_hidden_stats_values_and_gradients_match_naive():
    hidden, head, targets = inputs(1)
    f = jax.jit(jax.value_and_grad(lambda h, w: weighted(obj.hidden_token_stats(h, w, targets, chunk_size=8)),
                                   argnums=(0, 1)))
    f_ref = jax.value_and_grad(lambda h, w: weighted(obj.naive_token_stats(h @ w, targets)), argnums=(0, 1))
    (v, (gh, gw)), (v_ref, (gh_ref, gw_ref)) = f(hidden, head), f_ref(hidden, head)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(gh, gh_ref, atol=2e-5)
    np.testing.assert_allclose(gw, gw_ref, atol=2e-5)


def test_hidden_stats_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        hidden, head, targets = inputs(2, jnp.float64)
        f = jax.jit(lambda h, w: weighted(obj.hidden_token_stats(h, w, targets, chunk_size=10)))
        gh, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(hidden, head)
        rng = np.random.default_rng(0)
        dh, dw = jnp.asarray(rng.normal(size=hidden.shape)), jnp.asarray(rng.normal(size=head.shape))
        fd = (f(hidden + 1e-6 * dh, head + 1e-6 * dw) - f(hidden - 1e-6 * dh, head - 1e-6 * dw)) / 2e-6
        assert gh.dtype == jnp.float64
        np.testing.assert_allclose(jnp.sum(gh * dh) + jnp.sum(gw * dw), fd, rtol=1e-6)


def test_bf16_logits_are_upcast_per_chunk():
    hidden, head, targets = inputs(3)
    logits = (hidden @ head).astype(jnp.bfloat16)
    logp, ent = obj.logits_token_stats(logits, targets, chunk_size=16)
    ref_logp, ref_ent = obj.naive_token_stats(logits.astype(jnp.float32), targets)
    assert logp.dtype == jnp.float32
    np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5)


def test_chunked_forward_and_backward_never_hold_a_full_fp32_logits_copy():
    # Scratch memory of the compiled function stays below one fp32 [B, T, V] array, while the naive
    # form needs more. (fp32 input: XLA:CPU upcasts every bf16 array, which says nothing about TPU/GPU.)
    b, t, d, v, chunk = 2, 4, 8, 4096, 256
    full = b * t * v * 4
    targets = jnp.zeros((b, t), jnp.int32)
    logits = jnp.zeros((b, t, v), jnp.float32)
    hidden, head = jnp.zeros((b, t, d)), jnp.zeros((d, v))

    def scratch(fn, *args):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    chunked = lambda l: weighted(obj.logits_token_stats(l, targets, chunk_size=chunk))
    from_hidden = lambda h, w: weighted(obj.hidden_token_stats(h, w, targets, chunk_size=chunk))
    assert scratch(chunked, logits) < full // 4
    assert scratch(jax.grad(chunked), logits) < full // 4
    assert scratch(from_hidden, hidden, head) < full // 4
    assert scratch(jax.grad(from_hidden, argnums=(0, 1)), hidden, head) < full // 4
    assert scratch(lambda l: weighted(obj.naive_token_stats(l, targets)), logits) >= full


def test_bad_shapes_name_the_array():
    hidden, head, targets = inputs()
    with pytest.raises(ValueError, match=r"lm_head must be \[D, V\]"):
        obj.hidden_token_stats(hidden, head.T, targets)
    with pytest.raises(ValueError, match="targets must be"):
        obj.logits_token_stats(hidden @ head, targets[:, :2])
