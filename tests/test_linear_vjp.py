"""`linear`'s CPU weight-gradient VJP against autodiff of the plain einsum (the previous path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models import linear as linear_mod
from jaxrl_llm.models.linear import linear


def _plain(x, w, out_dtype=None):
    y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def _grads(fn, x, w, out_dtype=None):
    def loss(x, w):
        y = fn(x, w, out_dtype=out_dtype).astype(jnp.float32)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1], dtype=jnp.float32))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("shape", [(3, 5, 8), (7, 8), (2, 3, 4, 8)])
def test_linear_vjp_matches_autodiff_fp32(shape):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape, jnp.float32)
    w = jax.random.normal(kw, (8, 6), jnp.float32)
    (v1, (dx1, dw1)), (v0, (dx0, dw0)) = _grads(linear, x, w), _grads(_plain, x, w)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw1, dw0, rtol=1e-5, atol=1e-6)
    assert dx1.shape == x.shape and dw1.shape == w.shape


def test_linear_vjp_float64_reference():
    # d/dW sum(G * (X W)) = X^T G, d/dX = G W^T, checked in float64 numpy.
    rng = np.random.default_rng(1)
    x, w, g = rng.normal(size=(4, 3, 5)), rng.normal(size=(5, 2)), rng.normal(size=(4, 3, 2))
    _, vjp = jax.vjp(linear, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    dx, dw = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(dx, g @ w.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, np.einsum("bti,bto->io", x, g), rtol=1e-5, atol=1e-6)


def test_linear_vjp_bf16_weight_float32_output():
    # The lm_head case: bf16 activations and weight, float32 logits; the cotangent stays float32.
    kx, kw = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(kx, (2, 4, 16), jnp.bfloat16)
    w = jax.random.normal(kw, (16, 32), jnp.float32)
    (v1, (dx1, dw1)), (v0, (dx0, dw0)) = _grads(linear, x, w, jnp.float32), _grads(_plain, x, w, jnp.float32)
    assert dx1.dtype == jnp.bfloat16 and dw1.dtype == jnp.float32
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dx1, np.float32), np.asarray(dx0, np.float32), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(dw1, dw0, rtol=2e-2, atol=2e-2)


def test_weight_gradient_takes_the_fast_dot_on_cpu():
    # Every dot of the weight gradient contracts the lhs minor dimension, the form XLA:CPU sends to
    # its fast matmul path; autodiff of the plain einsum contracts the token dimension instead.
    x = jnp.ones((4, 64, 32), jnp.float32)
    w = jnp.ones((32, 48), jnp.float32)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(linear(x, w) ** 2)))
    hlo = grad.lower(w).compile().as_text()
    plain = jax.jit(jax.grad(lambda w: jnp.sum(_plain(x, w) ** 2))).lower(w).compile().as_text()
    if "__ynn_fusion" not in plain:
        pytest.skip("this XLA:CPU build has no YNNPACK fusion")
    dots = [line for line in hlo.splitlines() if " dot(" in line]
    assert dots and all("lhs_contracting_dims={1}" in d for d in dots), dots
    assert any("lhs_contracting_dims={0}" in line for line in plain.splitlines() if " dot(" in line)


def test_non_cpu_target_uses_autodiff_path(monkeypatch):
    monkeypatch.setattr(linear_mod, "target_platform", lambda: "tpu")
    x = jnp.ones((2, 3, 4))
    w = jnp.ones((4, 5))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(linear(x, w))))(w))
    assert "custom_vjp" not in jaxpr and "optimization_barrier" not in jaxpr
    monkeypatch.setattr(linear_mod, "target_platform", lambda: "cpu")
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(linear(x, w))))(w))
    assert "optimization_barrier" in jaxpr
