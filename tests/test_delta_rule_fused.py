"""The fused Pallas forward (chunk preparation and state pass in one kernel), in interpret mode."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_delta_rule_kernels import VARIANTS, make_inputs, numpy_delta_rule

from jaxrl_llm.kernels.delta_rule import delta_rule
from jaxrl_llm.kernels.delta_rule.pallas import pallas_delta_rule
from jaxrl_llm.kernels.delta_rule.pallas_fused import exact_decayed_scores, unit_lower_inverse_rows

C = 16


def _run(args, kernel, reset=None, chunk_size=C):
    a = {n: (None if x is None else jnp.asarray(x)) for n, x in args.items()}
    kd = a["q"].shape[-1]
    fn = jax.jit(lambda a, reset: pallas_delta_rule(
        a["q"], a["k"], a["v"], a["g"], a["beta"], a.get("beta_v"), a["initial_state"], kd**-0.5,
        reset, chunk_size, True, kernel))
    return fn(a, reset)


def test_forward_substitution_inverse_matches_numpy():
    rng = np.random.default_rng(0)
    a = np.tril(rng.standard_normal((16, 16)) * 0.3, -1).astype(np.float32)
    got = jax.jit(unit_lower_inverse_rows)(jnp.asarray(a))
    np.testing.assert_allclose(got, np.linalg.inv(np.eye(16) + a.astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("hv", [2, 4])  # 4 value heads on 2 query/key heads: grouped (GQA)
def test_fused_equals_state_pass_and_float64(variant, hv):
    args = make_inputs(variant, seed=11, t=37, hv=hv)
    o, s = _run(args, "fused")
    o_sp, s_sp = _run(args, "state_pass")
    want_o, want_s = numpy_delta_rule(**args)
    np.testing.assert_allclose(o, want_o, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(s, want_s, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(o, o_sp, atol=1e-5)
    np.testing.assert_allclose(s, s_sp, atol=1e-5)


def test_exact_scores_equal_the_reference_row_scores_and_numpy():
    rng = np.random.default_rng(9)
    q, r, e = (rng.standard_normal((16, 16)).astype(np.float32) for _ in range(3))
    big_g = np.cumsum(-np.abs(rng.standard_normal((16, 16))) * 0.2, axis=0).astype(np.float32)
    p, a = jax.jit(exact_decayed_scores)(*map(jnp.asarray, (q, r, e, big_g)))
    diff = big_g[:, None, :] - big_g[None, :, :]  # [i, j, d]
    want_p = np.einsum("id,jd,ijd->ij", q, e, np.exp(np.minimum(diff, 0.0)))
    lower = np.tril(np.ones((16, 16), bool))
    np.testing.assert_allclose(np.where(lower, p, 0.0), np.where(lower, want_p, 0.0), atol=1e-5)
    want_a = np.einsum("id,jd,ijd->ij", r, e, np.exp(np.minimum(diff, 0.0)))
    np.testing.assert_allclose(np.where(lower, a, 0.0), np.where(lower, want_a, 0.0), atol=1e-5)


@pytest.mark.parametrize("variant", ["kda", "fg2plus"])
def test_strong_per_channel_decay_is_exact_inside_the_fused_kernel(variant):
    args = make_inputs(variant, seed=3, t=40)
    rng = np.random.default_rng(3)
    # Spans of ~100-400 per chunk: the one-reference-row factors would overflow; the kernel takes
    # the column-by-column scores for those chunks.
    args["g"] = -np.abs(rng.standard_normal(args["g"].shape) * 8.0).astype(np.float32)
    args["g"][:, :16] *= 0.01  # ... and the reference-row matmul for the first chunk
    o, s = _run(args, "fused")
    want_o, want_s = numpy_delta_rule(**args)
    np.testing.assert_allclose(o, want_o, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(s, want_s, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["gdn", "kda", "fg2plus"])
def test_bfloat16_inputs_within_one_percent(variant):
    # bf16 inputs take bf16 matmul operands in the fused kernel (fp32 accumulation and state).
    args = make_inputs(variant, seed=5, t=48)
    b16 = {n: (x if x is None or n == "initial_state" else np.asarray(jnp.asarray(x, jnp.bfloat16)))
           for n, x in args.items()}
    o, _ = _run({n: (None if x is None else jnp.asarray(x, jnp.bfloat16) if n != "initial_state"
                     else jnp.asarray(x)) for n, x in args.items()}, "fused")
    assert o.dtype == jnp.bfloat16
    want, _ = numpy_delta_rule(**{n: (None if x is None else np.asarray(x, np.float32)) for n, x in b16.items()})
    rel = np.linalg.norm(np.asarray(o, np.float32) - want) / np.linalg.norm(want)
    assert rel < 1e-2
    assert rel > 1e-4  # the bf16 output and operands do round: the check is not vacuous


def test_packed_sequences_need_the_state_pass_kernel():
    args = make_inputs("gdn", seed=2)
    reset = jnp.zeros(args["q"].shape[:2], bool).at[:, 9].set(True)
    with pytest.raises(ValueError, match="fused kernel does not take packed sequences"):
        _run(args, "fused", reset=reset)
    with pytest.raises(ValueError, match="kernel must be one of"):
        _run(args, "triton")
    # "auto" takes the state-pass kernel for them and stays exact.
    o, _ = _run(args, "auto", reset=reset)
    want, _ = numpy_delta_rule(**args, reset=np.asarray(reset))
    np.testing.assert_allclose(o, want, atol=2e-5, rtol=1e-4)


def test_gradients_through_the_fused_forward_match_chunked():
    args = {n: (None if x is None else jnp.asarray(x)) for n, x in make_inputs("kda", seed=4, t=20).items()}

    def loss(impl, q, k, v, g, beta):
        o, s = delta_rule(q, k, v, g, beta, initial_state=args["initial_state"], impl=impl,
                          chunk_size=C, output_final_state=True, interpret=True)
        return jnp.sum(o * o) + jnp.sum(s)

    inputs = tuple(args[n] for n in ("q", "k", "v", "g", "beta"))
    got = jax.grad(functools.partial(loss, "pallas"), argnums=(0, 1, 2, 3, 4))(*inputs)
    want = jax.grad(functools.partial(loss, "recurrent"), argnums=(0, 1, 2, 3, 4))(*inputs)
    for g_got, g_want in zip(got, want):
        np.testing.assert_allclose(g_got, g_want, atol=2e-4, rtol=2e-3)


def test_lowers_the_fused_kernel_for_cuda_and_the_state_pass_kernel_for_tpu():
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    fn = jax.jit(lambda q, k, v, g, b: delta_rule(q, k, v, g, b, impl="pallas", chunk_size=16,
                                                  interpret=False)[0])
    traced = fn.trace(z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2, 128), z(1, 40, 2), z(1, 40, 2))
    cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
    tpu = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert "delta_rule_fused_forward" in cuda and "delta_rule_state_pass" not in cuda
    assert "delta_rule_state_pass" in tpu and "delta_rule_fused_forward" not in tpu
    # kernel="fused" asks for the Mosaic-placed fused kernel on TPU.
    fused = jax.jit(lambda q, k, v, g, b: pallas_delta_rule(q, k, v, g, b, None, z(1, 2, 16, 16), 0.25, None, 16,
                                                            False, "fused")[0])
    text = fused.trace(z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2), z(1, 40, 2)).lower(
        lowering_platforms=("tpu",)).as_text()
    assert "delta_rule_fused_forward" in text and "delta_rule_state_pass" not in text


def test_traced_scale_equals_a_static_scale():
    args = {n: (None if x is None else jnp.asarray(x)) for n, x in make_inputs("gdn", seed=8).items()}
    run = lambda scale: delta_rule(args["q"], args["k"], args["v"], args["g"], args["beta"],  # noqa: E731
                                   initial_state=args["initial_state"], scale=scale, impl="pallas",
                                   chunk_size=C, interpret=True)[0]
    traced = jax.jit(run)(jnp.float32(0.3))
    np.testing.assert_allclose(traced, run(0.3), atol=1e-6)
    np.testing.assert_allclose(traced, numpy_delta_rule(**make_inputs("gdn", seed=8), scale=0.3)[0],
                               atol=2e-5, rtol=1e-4)
