"""Quantized rollouts and QaRL: the fake-quant learner reproduces the quantized sampler's log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, preset
from jaxrl_llm.models.linear import linear
from jaxrl_llm.quant import QuantArray, dequantize, dequantize_params, quantize, quantize_params
from jaxrl_llm.rollout import SamplingConfig, generate, learner_logprobs, logprob_mismatch_metrics, token_batch

CFG = preset("tiny", num_layers=1)  # one layer: the alignment does not depend on depth; compiles are halved
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
CONFIG = SamplingConfig(6, temperature=1.0, n=2)
score = jax.jit(learner_logprobs, static_argnums=0, static_argnames="quant_format")


@pytest.fixture(scope="module")
def model():
    graphdef, params = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    return graphdef, jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, params)


@pytest.fixture(scope="module")
def int4_rollout(model):
    graphdef, params = model
    quantized = quantize_params(params, "int4")
    return generate(graphdef, quantized, PROMPTS, key=jax.random.key(0), config=CONFIG)


def _metrics(rollout, learner):
    out = logprob_mismatch_metrics(rollout.logprobs, learner, rollout.response_mask)
    return {k: float(v) for k, v in out.items()}


def test_aligned_learner_matches_int4_rollout_and_unaligned_does_not(model, int4_rollout):
    graphdef, params = model
    aligned = _metrics(int4_rollout, score(graphdef, params, int4_rollout, quant_format="int4"))
    unaligned = _metrics(int4_rollout, score(graphdef, params, int4_rollout, quant_format=None))
    assert aligned["mismatch/mean_abs_logp_diff"] < 1e-5 and aligned["mismatch/kl_k3"] < 1e-9
    assert unaligned["mismatch/mean_abs_logp_diff"] > 1e-2 and unaligned["mismatch/kl_k3"] > 1e-3


def test_gradient_reaches_master_weights_straight_through(model, int4_rollout):
    graphdef, params = model
    mask = int4_rollout.response_mask

    def objective(p):
        return jnp.sum(learner_logprobs(graphdef, p, int4_rollout, quant_format="int4") * mask)

    grad = jax.jit(jax.grad(objective))
    grads = grad(params)
    # STE: the gradient at the master weights equals the gradient at their rounded values (which
    # re-quantize to themselves), as if the rounding were the identity; a true derivative of the
    # rounding would be zero.
    reference = grad(dequantize_params(quantize_params(params, "int4")))
    q_proj = ("layers", 0, "mixer", "q_proj")
    flat, flat_ref = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(reference))
    assert float(jnp.abs(flat[q_proj].get_value()).max()) > 1e-3
    for path in flat:
        np.testing.assert_allclose(flat[path].get_value(), flat_ref[path].get_value(), atol=1e-4, err_msg=str(path))


def test_per_channel_int8_runs_through_the_same_sampler_and_aligns(model):
    # int8 takes qmatmul's per-channel path (codes in the matmul, scales on the output), as fp8 does.
    graphdef, params, fmt = *model, "int8"
    quantized = quantize_params(params, fmt)
    leaves = jax.tree.leaves(quantized, is_leaf=lambda x: isinstance(x, QuantArray))
    # q, k, v, o, gate, up, down and the lm_head; the embedding table stays in full precision.
    assert sum(isinstance(x, QuantArray) and x.fmt == fmt for x in leaves) == 7 + 1
    rollout = generate(graphdef, quantized, PROMPTS, key=jax.random.key(1), config=CONFIG)
    aligned = _metrics(rollout, score(graphdef, params, rollout, quant_format=fmt))
    assert aligned["mismatch/mean_abs_logp_diff"] < 1e-5


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_linear_dispatches_quantized_weights_to_the_quantized_matmul(fmt):
    x = jax.random.normal(jax.random.key(0), (2, 3, 160), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (160, 24), jnp.float32)
    q = quantize(w, fmt)
    expected = np.asarray(x, np.float64) @ np.asarray(dequantize(q), np.float64)
    np.testing.assert_allclose(linear(x, q), expected, rtol=1e-4, atol=1e-4)
    assert linear(x.astype(jnp.bfloat16), q).dtype == jnp.bfloat16
    np.testing.assert_allclose(linear(x, q, out_dtype=jnp.float32), linear(x, dequantize(q)), rtol=1e-5, atol=1e-5)


def test_mismatch_metrics_hand_computed():
    sampler = jnp.array([[-1.0, -2.0, -3.0]])
    learner = jnp.array([[-1.5, -2.0, -9.0]])
    mask = jnp.array([[1, 1, 0]])
    out = logprob_mismatch_metrics(sampler, learner, mask)
    np.testing.assert_allclose(out["mismatch/mean_abs_logp_diff"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(out["mismatch/kl_k3"], (np.exp(-0.5) - 1 + 0.5) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"must be equal \[R, N\]"):
        logprob_mismatch_metrics(sampler, learner[:, :2], mask)


def test_token_batch_places_old_logprobs_on_generated_columns(int4_rollout):
    batch = token_batch(int4_rollout)
    width = int4_rollout.prompt_width
    np.testing.assert_array_equal(batch["loss_mask"][:, width:], int4_rollout.response_mask)
    np.testing.assert_array_equal(batch["loss_mask"][:, :width], 0)
    np.testing.assert_array_equal(batch["old_logprobs"][:, width:], int4_rollout.logprobs)
    # Row 2 is prompt [3, 4] left-padded to 5: positions 0, 1 then 2.. for the response.
    np.testing.assert_array_equal(batch["segment_ids"][2, :width], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(batch["positions"][2, 3:width + 2], [0, 1, 2, 3])
