"""The jitted SFT step: sharded TrainState, gradient accumulation, the non-finite guard."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.sft import make_sft_step, split_micro_batches
from jaxrl_llm.train.sft_run import setup_sft

SMALL = {
    "model.hidden_size": "32", "model.intermediate_size": "64", "model.num_layers": "1",
    "model.head_dim": "8", "data.num_train": "256", "train.batch_size": "8", "eval.num_problems": "0",
}


def small_config(**overrides):
    cfg = load_config_file("configs/sft_tiny.py")
    for key, value in {**SMALL, **overrides}.items():
        apply_override(cfg, key, value)
    return cfg


@functools.lru_cache(maxsize=None)
def sharded_setup():
    return setup_sft(small_config(**{"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"}))


def test_every_train_state_leaf_carries_a_named_sharding_on_the_mesh():
    setup = sharded_setup()
    leaves = jax.tree.leaves(setup.state)
    assert len(leaves) > 10
    for leaf in leaves:
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == setup.mesh
    mu = setup.state.opt_state[1][0].mu  # (clip, (adam, decay, schedule))
    q = setup.state.params["layers"][0]["mixer"]["q_proj"]
    assert mu["layers"][0]["mixer"]["q_proj"].sharding.spec == q.sharding.spec == jax.P("fsdp", "tensor")


def test_step_is_donated_and_keeps_shardings():
    setup = sharded_setup()
    state = jax.tree.map(jnp.copy, setup.state)
    before = state.params["embed"]
    new_state, metrics = setup.step_fn(state, next(setup.iterator))
    assert before.is_deleted()  # donated
    assert int(new_state.step) == 1 and float(metrics["finite"]) == 1.0
    for old, new in zip(jax.tree.leaves(setup.state), jax.tree.leaves(new_state)):
        assert new.sharding == old.sharding


def test_micro_batches_take_strided_rows():
    batch = {"tokens": jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)}
    micro = split_micro_batches(batch, 4)
    assert micro["tokens"].shape == (4, 2, 3)
    np.testing.assert_array_equal(np.asarray(micro["tokens"][1, :, 0]), [1, 5])
    with pytest.raises(ValueError, match="train.micro_batches=3 must divide the batch size 8"):
        split_micro_batches(batch, 3)


def test_gradient_accumulation_equals_the_full_batch_step():
    setup = sharded_setup()
    batch = next(setup.iterator)
    shardings = jax.tree.map(lambda x: x.sharding, setup.state)
    # micro_batches=1 is the setup's own step; only the accumulating one compiles here.
    results = {1: setup.step_fn(jax.tree.map(jnp.copy, setup.state), batch)}
    step4 = make_sft_step(setup.parts, setup.optimizer, setup.schedule, shardings, setup.mesh,
                          rest=setup.rest, num_micro_batches=4)
    results[4] = step4(jax.tree.map(jnp.copy, setup.state), batch)
    (s1, m1), (s4, m4) = results[1], results[4]
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    assert float(m4["supervised_tokens"]) == float(m1["supervised_tokens"]) > 0
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_non_finite_loss_leaves_parameters_untouched():
    setup = sharded_setup()
    state = jax.tree.map(jnp.copy, setup.state)
    bad = jax.tree.map(lambda x: x, state.params)
    bad["final_norm"]["scale"] = bad["final_norm"]["scale"] * jnp.nan
    state = state.replace(params=bad)
    kept = np.asarray(state.params["embed"]).copy()
    new_state, metrics = setup.step_fn(state, next(setup.iterator))
    assert float(metrics["finite"]) == 0.0 and not np.isfinite(float(metrics["loss"]))
    np.testing.assert_array_equal(np.asarray(new_state.params["embed"]), kept)
