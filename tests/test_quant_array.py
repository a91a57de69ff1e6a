"""QuantArray formats: Test Q1, error bounds, padding, matmul parity, jit/grad of fake-quant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_llm.quant import (
    QuantArray,
    dequantize,
    fake_quant,
    qeinsum,
    qmatmul,
    quantize,
)


def _weights(shape, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # heavy-ish tails so that max|w| differs a lot between channels and groups
    return jnp.asarray(rng.standard_t(df=4, size=shape), dtype=dtype)


def test_q1_int4_values_and_ste_gradient():
    w = jnp.array([0.1, -0.35, 0.7, 0.2], jnp.float32)[:, None]  # [in=4, out=1], one group
    q = quantize(w, "int4")
    np.testing.assert_allclose(q.scale, [[0.1]], rtol=1e-6)
    # -3.5 rounds half to even -> -4
    np.testing.assert_array_equal(q.values[:4, 0], [1, -4, 7, 2])
    np.testing.assert_allclose(dequantize(q)[:, 0], [0.1, -0.4, 0.7, 0.2], rtol=1e-6)
    np.testing.assert_allclose(fake_quant(w, "int4")[:, 0], [0.1, -0.4, 0.7, 0.2], rtol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(fake_quant(v, "int4")))(w)
    np.testing.assert_array_equal(grad[:, 0], [1.0, 1.0, 1.0, 1.0])


def test_quant_array_is_a_pytree_with_static_metadata():
    q = quantize(_weights((256, 8)), "int4")
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert [x.shape for x in leaves] == [(256, 8), (2, 8)]
    assert (q.fmt, q.group_size, q.in_features, q.orig_dtype) == ("int4", 128, 256, "float32")
    assert q.shape == (256, 8) and q.dtype == jnp.float32 and q.num_groups == 2
    q2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(q2, QuantArray) and q2.fmt == "int4"
    # metadata is static: jit sees it as structure, not as a traced value
    doubled = jax.jit(lambda a: jax.tree_util.tree_map(lambda x: x, a))(q)
    assert doubled.group_size == 128


@pytest.mark.parametrize(
    "fmt, qmax, code_range, groups",
    [("int8", 127.0, (-128, 127), 1), ("int4", 7.0, (-8, 7), 3)],
)
def test_int_error_bound_is_half_a_step(fmt, qmax, code_range, groups):
    w = _weights((384, 16), seed=1)
    q = quantize(w, fmt)
    assert q.values.dtype == jnp.int8
    assert q.scale.shape == (groups, 16)
    codes = np.asarray(q.values)
    assert codes.min() >= code_range[0] and codes.max() <= code_range[1]
    # every group reaches its extreme code (max|w| maps to qmax)
    wg = np.asarray(w).reshape(groups, -1, 16)
    np.testing.assert_allclose(q.scale, np.abs(wg).max(axis=1) / qmax, rtol=1e-6)
    step = np.repeat(np.asarray(q.scale), 384 // groups, axis=0)
    err = np.abs(np.asarray(w) - np.asarray(dequantize(q)))
    assert np.all(err <= step / 2 * (1 + 1e-5))
    assert err.max() > step.min() / 4  # the bound is tight-ish, not vacuous


def test_fp8_relative_error_bound():
    w = _weights((64, 12), seed=2)
    q = quantize(w, "fp8")
    assert q.values.dtype == jnp.float8_e4m3fn and q.scale.shape == (1, 12)
    np.testing.assert_allclose(q.scale[0], np.abs(np.asarray(w)).max(axis=0) / 448.0, rtol=1e-6)
    deq = np.asarray(dequantize(q))
    w_np = np.asarray(w)
    # e4m3: 3 mantissa bits -> half-ulp relative error 2^-4 for normals; absolute 2^-10 (in
    # scaled units) in the subnormal range below 2^-6
    bound = np.maximum(np.abs(w_np) * 2.0**-4, np.asarray(q.scale) * 2.0**-10) * (1 + 1e-6)
    assert np.all(np.abs(w_np - deq) <= bound)
    # channel maxima are represented exactly (they map to 448)
    np.testing.assert_allclose(np.abs(deq).max(axis=0), np.abs(w_np).max(axis=0), rtol=1e-6)


def test_int4_pads_input_dim_not_multiple_of_group():
    w = _weights((200, 6), seed=3)
    q = quantize(w, "int4")
    assert q.values.shape == (256, 6) and q.scale.shape == (2, 6) and q.in_features == 200
    np.testing.assert_array_equal(q.values[200:], 0)  # padding is exact zeros
    # the second group's scale only sees the 72 real rows
    np.testing.assert_allclose(q.scale[1], np.abs(np.asarray(w)[128:]).max(axis=0) / 7, rtol=1e-6)
    assert dequantize(q).shape == (200, 6)
    x = _weights((3, 200), seed=4)
    np.testing.assert_allclose(qmatmul(x, q), x @ dequantize(q), rtol=1e-5, atol=1e-5)


def test_custom_group_size_and_native_int4_storage():
    w = _weights((64, 4), seed=5)
    q = quantize(w, "int4", group_size=16, storage_dtype=jnp.int4)
    assert q.values.dtype == jnp.int4 and q.scale.shape == (4, 4)
    q8 = quantize(w, "int4", group_size=16)
    np.testing.assert_array_equal(dequantize(q), dequantize(q8))
    per_channel = quantize(w, "int8", group_size=32)
    assert per_channel.scale.shape == (2, 4)


def test_zero_channel_quantizes_to_zero():
    w = jnp.zeros((8, 3)).at[:, 1].set(jnp.arange(8.0))
    for fmt in ("int8", "int4", "fp8"):
        deq = dequantize(quantize(w, fmt))
        assert np.all(np.isfinite(deq))
        np.testing.assert_array_equal(deq[:, 0], 0.0)


def test_leading_axes_are_batch_axes():
    w = _weights((3, 130, 5), seed=6)  # stacked layers
    q = quantize(w, "int4")
    assert q.values.shape == (3, 256, 5) and q.scale.shape == (3, 2, 5)
    for layer in range(3):
        ql = quantize(w[layer], "int4")
        np.testing.assert_array_equal(dequantize(q)[layer], dequantize(ql))
    # scanning over the layer axis slices a QuantArray like any pytree
    x = _weights((2, 130), seed=7)

    def body(h, layer_w):
        return h, qmatmul(h, layer_w)

    _, ys = jax.lax.scan(body, x, q)
    np.testing.assert_allclose(ys[1], x @ dequantize(q)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_qmatmul_equals_x_at_dequantized(fmt):
    w = _weights((256, 24), seed=8)
    x = _weights((2, 3, 256), seed=9)
    q = quantize(w, fmt)
    ref = np.asarray(x, np.float64) @ np.asarray(dequantize(q), np.float64)
    np.testing.assert_allclose(qmatmul(x, q), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(qeinsum("btd,df->btf", x, q), ref, rtol=1e-4, atol=1e-4)
    # plain weights pass straight through
    np.testing.assert_allclose(qmatmul(x, w), x @ w, rtol=1e-5, atol=1e-5)


def test_qmatmul_bf16_inputs_keep_dtype():
    w = _weights((128, 8), seed=10, dtype=jnp.bfloat16)
    x = _weights((4, 128), seed=11, dtype=jnp.bfloat16)
    q = quantize(w, "int8")
    assert q.dtype == jnp.bfloat16 and dequantize(q).dtype == jnp.bfloat16
    y = qmatmul(x, q)
    assert y.dtype == jnp.bfloat16
    ref = np.asarray(x, np.float32) @ np.asarray(dequantize(q, jnp.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_jit_and_grad_through_fake_quant():
    w = _weights((256, 8), seed=12)
    x = _weights((4, 256), seed=13)

    @jax.jit
    def loss(w):
        return jnp.sum(jnp.tanh(x @ fake_quant(w, "int4")))

    g = jax.grad(loss)(w)
    # straight-through: the gradient is the plain gradient evaluated at the quantized weight
    w_q = dequantize(quantize(w, "int4"))
    g_ref = jax.grad(lambda v: jnp.sum(jnp.tanh(x @ v)))(w_q)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss(w), jnp.sum(jnp.tanh(x @ w_q)), rtol=1e-6)
    # a jitted qmatmul on a QuantArray argument works and agrees with eager
    q = quantize(w, "int8")
    np.testing.assert_allclose(jax.jit(qmatmul)(x, q), qmatmul(x, q), rtol=1e-6)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize(jnp.ones((4, 4)), "int3")
    msg = r"w must be a floating \[..., in, out\] array; got float32\(4,\)"
    with pytest.raises(ValueError, match=msg):
        quantize(jnp.ones(4), "int8")
    with pytest.raises(ValueError, match="w must be a floating"):
        quantize(jnp.ones((4, 4), jnp.int32), "int8")
    with pytest.raises(ValueError, match="group_size must be"):
        quantize(jnp.ones((4, 4)), "int4", group_size=0)
    with pytest.raises(ValueError, match="storage_dtype for int8"):
        quantize(jnp.ones((4, 4)), "int8", storage_dtype=jnp.int4)
    q = quantize(jnp.ones((16, 4)), "int8")
    with pytest.raises(ValueError, match=r"x must be \[..., in\] with in = 16; got \(2, 8\)"):
        qmatmul(jnp.ones((2, 8)), q)
    with pytest.raises(ValueError, match=r"w must be \[in, out\]; got \(2, 16, 4\)"):
        qmatmul(jnp.ones((2, 16)), jnp.ones((2, 16, 4)))
    with pytest.raises(TypeError, match="q must be a QuantArray"):
        dequantize(jnp.ones((2, 2)))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    fmt=st.sampled_from(["int8", "int4"]),
    in_features=st.sampled_from([5, 130]),
    group_size=st.sampled_from([None, 4, 128]),
    seed=st.integers(0, 2**16),
)
def test_int_round_trip_bound_property(fmt, in_features, group_size, seed):
    w = np.asarray(_weights((in_features, 3), seed=seed), np.float64)
    q = quantize(jnp.asarray(w, jnp.float32), fmt, group_size=group_size)
    gs = in_features if group_size is None else group_size
    qmax = 127.0 if fmt == "int8" else 7.0
    # float64 reference: per (group, column) step and exact RTN reconstruction
    padded = np.zeros((q.values.shape[0], 3))
    padded[:in_features] = w
    groups = padded.reshape(-1, gs, 3)
    step = np.abs(groups).max(axis=1, keepdims=True) / qmax
    scaled = groups / np.where(step > 0, step, 1.0)
    ref = (np.round(scaled) * step).reshape(-1, 3)[:in_features]
    # float32 and float64 may round a near-tie differently; compare everywhere else
    near_tie = (np.abs(np.abs(scaled) % 1.0 - 0.5) < 1e-4).reshape(-1, 3)[:in_features]
    deq = np.asarray(dequantize(q), np.float64)
    np.testing.assert_allclose(deq[~near_tie], ref[~near_tie], atol=1e-6)
    step_rows = np.repeat(step[:, 0], gs, axis=0)[:in_features]
    assert np.all(np.abs(w - deq) <= step_rows / 2 + 1e-6)
