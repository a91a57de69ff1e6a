"""Checkpoints: exact resume (state + data iterator), retention, and no NaN checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.checkpoint import Checkpointer, NonFiniteStateError
from jaxrl_llm.train.sft_run import NonFiniteLossError, setup_sft, train_loop

SMALL = {
    "model.hidden_size": "32", "model.intermediate_size": "64", "model.num_layers": "1",
    "model.head_dim": "8", "data.num_train": "64", "train.batch_size": "4", "eval.num_problems": "0",
    "mesh.fsdp": "1", "train.steps": "6", "optimizer.warmup_steps": "2",
}


def small_config(**overrides):
    cfg = load_config_file("configs/sft_tiny.py")
    for key, value in {**SMALL, **overrides}.items():
        apply_override(cfg, key, value)
    return cfg


def tree_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    k = 3
    full = setup_sft(small_config())
    full_state, _ = train_loop(full.state, full.step_fn, full.iterator, 2 * k)

    first = setup_sft(small_config())
    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    half_state, _ = train_loop(first.state, first.step_fn, first.iterator, k, checkpointer=ckpt, checkpoint_every=k)
    assert ckpt.all_steps() == [k]
    assert not tree_equal(half_state.params, full_state.params)

    fresh = setup_sft(small_config())
    restored = ckpt.restore(fresh.state, fresh.iterator)
    assert int(restored.step) == k and tree_equal(restored.params, half_state.params)
    assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh.state)))
    resumed, _ = train_loop(restored, fresh.step_fn, fresh.iterator, k)

    assert int(resumed.step) == 2 * k
    assert tree_equal(resumed.params, full_state.params)
    assert tree_equal(resumed.opt_state, full_state.opt_state)

    # Without the iterator state the data differ, and so do the parameters.
    other = setup_sft(small_config())
    no_data = ckpt.restore(other.state)
    no_data, _ = train_loop(no_data, fresh.step_fn, other.iterator, k)
    assert not tree_equal(no_data.params, full_state.params)
    ckpt.close()


def test_only_the_last_max_to_keep_checkpoints_remain(tmp_path):
    setup = setup_sft(small_config())
    ckpt = Checkpointer(str(tmp_path / "keep"), max_to_keep=2)
    train_loop(setup.state, setup.step_fn, setup.iterator, 4, checkpointer=ckpt, checkpoint_every=1)
    assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
    ckpt.close()


def test_non_finite_loss_stops_with_the_step_and_writes_no_nan_checkpoint(tmp_path):
    # An absurd learning rate blows the weights up within a few steps.
    setup = setup_sft(small_config(**{"optimizer.learning_rate": "1e30", "optimizer.warmup_steps": "0",
                                      "optimizer.grad_clip_norm": "0.0"}))
    ckpt = Checkpointer(str(tmp_path / "nan"), max_to_keep=10)
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+)") as info:
        train_loop(setup.state, setup.step_fn, setup.iterator, 6, checkpointer=ckpt, checkpoint_every=1)
    bad_step = info.value.step
    assert 1 <= bad_step <= 6
    assert bad_step not in ckpt.all_steps() and all(s < bad_step for s in ckpt.all_steps())
    for step in ckpt.all_steps():
        restored = ckpt.restore(setup_state_like(setup), step=step)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(restored.params))
    ckpt.close()


def setup_state_like(setup):
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype, device=x.sharding), setup.state)


def test_checkpointer_refuses_a_state_holding_nan(tmp_path):
    setup = setup_sft(small_config())
    ckpt = Checkpointer(str(tmp_path / "refuse"))
    state = setup.state.replace(params=jax.tree.map(lambda x: x * jnp.nan, setup.state.params))
    with pytest.raises(NonFiniteStateError, match="step 7"):
        ckpt.save(7, state)
    assert ckpt.all_steps() == []
    ckpt.close()
