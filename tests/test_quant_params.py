"""quantize_params / fake_quant_params over whole parameter pytrees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.quant import (
    QuantArray,
    dequantize,
    dequantize_params,
    fake_quant,
    fake_quant_params,
    is_linear_weight,
    path_names,
    qmatmul,
    quantize,
    quantize_params,
)


def _params():
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "embed_tokens": arr(11, 8),
        "layers": [
            {
                "attn": {"q_proj": {"kernel": arr(8, 8), "bias": arr(8)}},
                "input_norm": {"scale": arr(8)},
                "mlp": {"up": arr(8, 16), "down": arr(16, 8)},
                "ln_1": {"weight": arr(8, 8)},  # 2-D, but named like a LayerNorm: skipped
            }
        ],
        "final_norm": {"scale": arr(8)},
        "lm_head": arr(8, 11),
        "step": jnp.asarray(3, jnp.int32),
    }


QUANTIZED = {"layers/0/attn/q_proj/kernel", "layers/0/mlp/up", "layers/0/mlp/down", "lm_head"}


def _selected(tree):
    is_quant = lambda x: isinstance(x, QuantArray)  # noqa: E731
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quant)[0]
    return {"/".join(path_names(p)) for p, leaf in flat if isinstance(leaf, QuantArray)}


def test_quantize_params_selects_linear_weights_only():
    params = _params()
    q = quantize_params(params, "int8")
    assert _selected(q) == QUANTIZED
    # skipped leaves are the very same objects
    assert q["embed_tokens"] is params["embed_tokens"]
    assert q["final_norm"]["scale"] is params["final_norm"]["scale"]
    assert q["layers"][0]["attn"]["q_proj"]["bias"] is params["layers"][0]["attn"]["q_proj"]["bias"]
    assert q["layers"][0]["ln_1"]["weight"] is params["layers"][0]["ln_1"]["weight"]
    assert q["step"] is params["step"]
    expected = dequantize(quantize(params["lm_head"], "int8"))
    np.testing.assert_array_equal(dequantize(q["lm_head"]), expected)


def test_embeddings_are_quantized_when_asked():
    q = quantize_params(_params(), "fp8", skip_embeddings=False)
    assert _selected(q) == QUANTIZED | {"embed_tokens"}


def test_custom_predicate_replaces_default():
    q = quantize_params(_params(), "int4", lambda names, leaf: names[-1] == "up")
    assert _selected(q) == {"layers/0/mlp/up"}
    assert q["layers"][0]["mlp"]["up"].values.shape == (128, 16)  # in=8 padded to one group


def test_dequantize_params_round_trip_within_half_step():
    params = _params()
    deq = dequantize_params(quantize_params(params, "int4", group_size=4))
    assert jax.tree_util.tree_structure(deq) == jax.tree_util.tree_structure(params)
    w, w_hat = params["layers"][0]["mlp"]["down"], deq["layers"][0]["mlp"]["down"]
    s = np.repeat(np.abs(np.asarray(w)).reshape(4, 4, 8).max(axis=1) / 7, 4, axis=0)
    assert np.all(np.abs(np.asarray(w - w_hat)) <= s / 2 * (1 + 1e-5))


def test_fake_quant_params_matches_quantized_forward_and_passes_gradients():
    params = {k: v for k, v in _params().items() if k != "step"}  # grad needs float leaves
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8)), jnp.float32)

    def forward(p, matmul):
        h = matmul(x, p["layers"][0]["mlp"]["up"])
        h = matmul(jax.nn.relu(h), p["layers"][0]["mlp"]["down"])
        return matmul(h, p["lm_head"])

    @jax.jit
    def loss(p):
        return jnp.mean(forward(fake_quant_params(p, "int4", group_size=4), jnp.matmul) ** 2)

    qparams = quantize_params(params, "int4", group_size=4)
    rollout_logits = forward(qparams, qmatmul)
    train_logits = forward(fake_quant_params(params, "int4", group_size=4), jnp.matmul)
    np.testing.assert_allclose(train_logits, rollout_logits, rtol=1e-5, atol=1e-5)

    grads = jax.grad(loss)(params)
    # STE: the gradient equals the plain gradient at the quantized weights
    deq = dequantize_params(qparams)
    ref = jax.grad(lambda p: jnp.mean(forward(p, jnp.matmul) ** 2))(deq)
    for name in ("up", "down"):
        np.testing.assert_allclose(
            grads["layers"][0]["mlp"][name], ref["layers"][0]["mlp"][name], rtol=1e-5, atol=1e-6
        )
    assert np.abs(np.asarray(grads["layers"][0]["mlp"]["up"])).sum() > 0
    # leaves the forward does not use get zero gradient and keep their shapes
    assert grads["embed_tokens"].shape == (11, 8)
    np.testing.assert_array_equal(grads["embed_tokens"], 0.0)


def test_fake_quant_params_leaves_skipped_leaves_untouched():
    params = _params()
    fq = fake_quant_params(params, "fp8")
    assert fq["final_norm"]["scale"] is params["final_norm"]["scale"]
    np.testing.assert_array_equal(fq["lm_head"], fake_quant(params["lm_head"], "fp8"))


def test_nnx_state_paths():
    nnx = pytest.importorskip("flax.nnx")

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(8, 4, rngs=rngs)
            self.norm = nnx.RMSNorm(4, rngs=rngs)
            self.embed = nnx.Embed(10, 8, rngs=rngs)

    state = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
    q = quantize_params(state, "int8")
    flat = jax.tree_util.tree_flatten_with_path(q, is_leaf=lambda x: isinstance(x, QuantArray))[0]
    chosen = {path_names(p)[:2] for p, leaf in flat if isinstance(leaf, QuantArray)}
    assert chosen == {("proj", "kernel")}


def test_default_predicate_cases():
    w2, w1 = jnp.ones((4, 4)), jnp.ones(4)
    assert is_linear_weight(("mlp", "gate_proj", "kernel"), w2)
    assert not is_linear_weight(("mlp", "gate_proj", "bias"), w1)
    assert not is_linear_weight(("post_attention_layernorm", "weight"), w2)
    assert not is_linear_weight(("wte",), w2)
    assert is_linear_weight(("wte",), w2, skip_embeddings=False)
    assert not is_linear_weight(("stacked", "kernel"), jnp.ones((2, 4, 4)))
    assert not is_linear_weight(("ids",), jnp.ones((4, 4), jnp.int32))
