"""Sharded initialisation, forward and gradients of the decoder on 8 CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_llm.models.config import tiny
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel.activations import activation_mesh
from jaxrl_llm.parallel.init import abstract_model, init_sharded, state_shardings
from jaxrl_llm.train.loss import masked_next_token_loss

CONFIG = tiny(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, num_kv_heads=2,
              head_dim=16)
MESHES = {"data2_fsdp2_tensor2": (2, 2, 2), "fsdp8": (1, 8, 1)}


def factory():
    return Decoder(CONFIG, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def single_device():
    mesh = make_mesh(1, 1, 1)
    parts, params, rest, _ = init_sharded(factory, mesh)
    return parts, params, rest


@functools.lru_cache(maxsize=None)
def sharded(shape):
    mesh = make_mesh(*shape)
    return (mesh, *init_sharded(factory, mesh))


def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 99, size=(8, 12)).astype(np.int32)
    segment_ids = np.ones((8, 12), np.int32)
    segment_ids[:, 9:] = 0  # right padding
    segment_ids[::2, 5:9] = 2  # two packed segments in even rows
    positions = np.where(segment_ids == 2, np.arange(12) - 5, np.arange(12)).astype(np.int32)
    loss_mask = (rng.random((8, 12)) < 0.6).astype(np.int32) * (segment_ids > 0)
    return tokens, positions, segment_ids, loss_mask


def loss_and_logits(parts, params, rest, tokens, positions, segment_ids, loss_mask):
    logits, _ = parts.merge(params, rest)(tokens, positions, segment_ids=segment_ids)
    loss, count, _ = masked_next_token_loss(logits, tokens, loss_mask, segment_ids)
    return loss / count, logits


def test_parameters_are_described_abstractly_before_any_allocation():
    parts = abstract_model(factory)
    leaves = jax.tree.leaves(parts.param_shapes())
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


@pytest.mark.parametrize("shape", MESHES.values(), ids=MESHES.keys())
def test_parameters_carry_the_rule_table_specs(shape):
    mesh, _, params, _, shardings = sharded(shape)
    tensor = "tensor" if shape[2] > 1 else None
    spec = lambda *axes: P(*axes)  # noqa: E731
    expected = {
        ("embed",): spec(tensor, "fsdp"),  # (vocab, embed)
        ("lm_head",): spec("fsdp", tensor) if tensor else spec("fsdp"),
        ("layers", 0, "mixer", "q_proj"): spec("fsdp", tensor) if tensor else spec("fsdp"),
        ("layers", 0, "mixer", "k_proj"): spec("fsdp", tensor) if tensor else spec("fsdp"),
        ("layers", 0, "mixer", "o_proj"): spec(tensor, "fsdp"),
        ("layers", 0, "mlp", "down_proj"): spec(tensor, "fsdp"),
        ("layers", 0, "mlp", "up_proj"): spec("fsdp", tensor) if tensor else spec("fsdp"),
        ("final_norm", "scale"): spec(),
    }
    for path, want in expected.items():
        leaf = functools.reduce(lambda d, k: d[k], path, params)
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh, path
        assert leaf.sharding.spec == want, (path, leaf.sharding.spec, want)
        assert functools.reduce(lambda d, k: d[k], path, shardings).spec == want
        # Each device holds only its shard.
        shard_shape = leaf.sharding.shard_shape(leaf.shape)
        assert all(s.data.shape == shard_shape for s in leaf.addressable_shards)
    assert state_shardings(abstract_model(factory).abstract_params, mesh)["embed"].spec == expected[("embed",)]


def test_a_parameter_rule_that_cannot_apply_fails_naming_the_parameter():
    odd = tiny(vocab_size=128, intermediate_size=100, num_layers=1)
    parts = abstract_model(lambda: Decoder(odd, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"^layers\.0\.mlp\.down_proj: dimension 0 \(logical 'mlp', size 100\) is "
                                         r"not divisible by mesh axes \('tensor',\) of size 8"):
        state_shardings(parts.abstract_params, make_mesh(1, 1, 8))
    # A table that puts two of a weight's dimensions on one mesh axis fails the same way.
    with pytest.raises(ValueError, match=r"^embed: dimension 1 \(logical 'embed'\) maps to mesh axes \('tensor',\)"):
        state_shardings(parts.abstract_params, make_mesh(1, 1, 2), {"vocab": "tensor", "embed": "tensor"})


@pytest.mark.parametrize("shape", MESHES.values(), ids=MESHES.keys())
def test_sharded_init_matches_single_device_init(shape):
    _, _, params, _, _ = sharded(shape)
    _, ref, _ = single_device()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("shape", MESHES.values(), ids=MESHES.keys())
def test_sharded_forward_and_gradients_match_one_device(shape):
    mesh, parts, params, rest, shardings = sharded(shape)
    ref_parts, ref_params, ref_rest = single_device()
    arrays = batch()
    grad_fn = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)

    (ref_loss, ref_logits), ref_grads = jax.jit(functools.partial(grad_fn, ref_parts))(ref_params, ref_rest, *arrays)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    sharded_arrays = [jax.device_put(x, batch_sharding) for x in arrays]

    def on_mesh(*args):
        with activation_mesh(mesh):  # the residual stream pinned to the batch layout
            return grad_fn(parts, *args)

    step = jax.jit(on_mesh, out_shardings=((None, None), shardings))
    (loss, logits), grads = step(params, rest, *sharded_arrays)

    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5, err_msg=str(path))
    # Gradients come back with their parameter's sharding.
    assert grads["layers"][0]["mlp"]["gate_proj"].sharding.spec == params["layers"][0]["mlp"]["gate_proj"].sharding.spec
    assert float(jnp.abs(ref_grads["embed"]).sum()) > 0
