"""Hybrid decoders on int8-quantized parameters (conv taps and the tied embedding included): the full
forward and cached prefill + decode run and agree with the float model on the dequantized weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, functional, init_cache, preset
from jaxrl_llm.models.decoder import TransposedWeight, embedding_rows
from jaxrl_llm.quant import QuantArray, dequantize, dequantize_params, quantize, quantize_params

# Every delta layer reads its conv taps the same way: one per-head and one per-channel decay layer.
LAYER_TYPES = ("gated_deltanet", "kda", "attention")
forward = jax.jit(functional.forward, static_argnums=0)
B, T, PREFILL = 2, 8, 6


@pytest.fixture(scope="module")
def models():
    config = preset("hybrid-tiny", num_layers=3, layer_types=LAYER_TYPES, delta_chunk_size=4,
                    delta_impl="chunked", tie_word_embeddings=True)
    graphdef, params = nnx.split(Decoder(config, rngs=nnx.Rngs(0)))
    # Scale the 2-D weights up from the init so quantization mistakes move the logits visibly.
    params = jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, params)
    quantized = quantize_params(params, "int8", skip_embeddings=False)
    return graphdef, config, quantized, dequantize_params(quantized)


def _inputs():
    tokens = np.random.RandomState(0).randint(1, 128, (B, T))
    segments = np.ones((B, T), np.int32)
    segments[1, :3] = 0  # a left-padded row
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
    return (jnp.asarray(a, jnp.int32) for a in (tokens, positions, segments))


def _logits(graphdef, params, tokens, positions, segments, cache=None):
    logits, cache = forward(graphdef, params, tokens, positions, segment_ids=segments, cache=cache)
    return np.asarray(logits), cache


def test_conv_taps_and_tied_embedding_are_quantized(models):
    graphdef, _, quantized, _ = models
    model = nnx.merge(graphdef, quantized)
    assert isinstance(model.embed.get_value(), QuantArray)
    for i in range(2):
        assert isinstance(model.layers[i].mixer.delta.conv1d.get_value(), QuantArray), f"layer {i}"


def test_full_forward_on_quantized_params_matches_dequantized_float_model(models):
    graphdef, _, quantized, dequantized = models
    tokens, positions, segments = _inputs()
    got, _ = _logits(graphdef, quantized, tokens, positions, segments)
    want, _ = _logits(graphdef, dequantized, tokens, positions, segments)
    real = np.asarray(segments) != 0
    assert np.abs(want[real]).max() > 0.5
    np.testing.assert_allclose(got[real], want[real], atol=2e-4 * np.abs(want).max(), rtol=0)


def test_prefill_then_decode_on_quantized_params_matches_dequantized_full_forward(models):
    graphdef, config, quantized, dequantized = models
    tokens, positions, segments = _inputs()
    want, _ = _logits(graphdef, dequantized, tokens, positions, segments)
    cache = init_cache(config, B, T)
    steps = []
    for cols in [slice(0, PREFILL)] + [slice(c, c + 1) for c in range(PREFILL, T)]:
        step, cache = _logits(graphdef, quantized, tokens[:, cols], positions[:, cols], segments[:, cols], cache)
        steps.append(step)
    got = np.concatenate(steps, axis=1)
    real = np.asarray(segments) != 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-4 * np.abs(want).max(), rtol=0)


def test_tied_lm_head_of_a_quantized_embedding_is_its_dequantized_transpose():
    table = jax.random.normal(jax.random.key(1), (12, 8))
    weight = TransposedWeight(quantize(table, "int8"))
    dense = weight.dequantize(jnp.float32)
    assert weight.shape == (8, 12) and dense.shape == (8, 12)
    np.testing.assert_array_equal(dense, dequantize(quantize(table, "int8"), jnp.float32).T)
    np.testing.assert_allclose(dense, table.T, atol=float(jnp.abs(table).max()) / 100)


def test_quantized_embedding_rows_equal_rows_of_the_dequantized_table():
    table = jax.random.normal(jax.random.key(2), (40, 6))
    quantized = quantize(table, "int8", group_size=16)
    tokens = jnp.asarray([[0, 15, 16, 39], [17, 3, 31, 32]], jnp.int32)
    got = embedding_rows(quantized, tokens, jnp.float32)
    np.testing.assert_allclose(got, jnp.take(dequantize(quantized, jnp.float32), tokens, axis=0), atol=1e-6, rtol=0)
