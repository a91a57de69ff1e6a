"""Per-channel quantized weights enter the matmul as codes: the scale multiplies the `[..., out]` result, never the weight."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models.linear import linear
from jaxrl_llm.quant import dequantize, qmatmul, quantize

IN, OUT = 96, 40


def weight_and_input(fmt, rows=8):
    w = jax.random.normal(jax.random.key(0), (IN, OUT), jnp.float32) * 0.05
    x = jax.random.normal(jax.random.key(1), (rows, IN), jnp.float32)
    return quantize(w, fmt), x


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_product_equals_the_float64_product_of_the_dequantized_weight(fmt):
    q, x = weight_and_input(fmt)
    ref = np.asarray(x, np.float64) @ np.asarray(dequantize(q, jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(qmatmul(x, q)), ref, rtol=1e-5, atol=1e-5)  # fp32 compute
    np.testing.assert_allclose(np.asarray(linear(x, q)), ref, rtol=1e-5, atol=1e-5)
    bf16 = np.asarray(linear(x.astype(jnp.bfloat16), q).astype(jnp.float32))
    x_bf16 = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    ref_bf16 = x_bf16 @ np.asarray(dequantize(q, jnp.float32), np.float64)
    np.testing.assert_allclose(bf16, ref_bf16, rtol=2e-2, atol=2e-2)  # the codes are exact in bf16


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_no_weight_sized_multiply_in_the_compiled_program(dtype):
    q, x = weight_and_input("int8")
    hlo = jax.jit(qmatmul).lower(x.astype(dtype), q).compile().as_text()
    weight_sized = re.findall(rf"\w+\[{IN},{OUT}\]\S* multiply\(", hlo)
    assert not weight_sized, weight_sized  # no values * scale: the scale is applied to the [8, OUT] product
    assert re.search(rf"\[8,{OUT}\]\S* multiply\(", hlo)
    assert re.search(rf"s8\[{IN},{OUT}\]", hlo)  # the int8 codes are the program's input


def test_scale_on_the_output_equals_scale_on_the_weight_per_channel():
    q, x = weight_and_input("int8", rows=3)
    codes = np.asarray(q.values, np.float64)
    scale = np.asarray(q.scale[0], np.float64)
    xs = np.asarray(x, np.float64)
    np.testing.assert_allclose((xs @ codes) * scale, xs @ (codes * scale), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(qmatmul(x, q)), (xs @ codes) * scale, rtol=1e-5, atol=1e-5)
