"""Checkpoints: exact resume (state + data iterator), retention, and no NaN checkpoints."""

import functools
import itertools

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


@functools.lru_cache(maxsize=None)
def shared_setup():
    # One compiled step for the whole module; each test starts from a copy of the initial state.
    return setup_sft(small_config())


def fresh_state(setup):
    return jax.tree.map(jnp.copy, setup.state)


def tree_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    k = 3
    setup = shared_setup()
    full_state, _ = train_loop(fresh_state(setup), setup.step_fn, iter(setup.dataset), 2 * k)

    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    half_state, _ = train_loop(fresh_state(setup), setup.step_fn, iter(setup.dataset), k,
                               checkpointer=ckpt, checkpoint_every=k)
    assert ckpt.all_steps() == [k]
    assert not tree_equal(half_state.params, full_state.params)

    # A fresh state and a fresh iterator (at the first batch), as a new process would have.
    iterator = iter(setup.dataset)
    restored = ckpt.restore(fresh_state(setup), iterator)
    assert int(restored.step) == k and tree_equal(restored.params, half_state.params)
    assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(setup.state)))
    resumed, _ = train_loop(restored, setup.step_fn, iterator, k)

    assert int(resumed.step) == 2 * k
    assert tree_equal(resumed.params, full_state.params)
    assert tree_equal(resumed.opt_state, full_state.opt_state)

    # Without the iterator state the data differ, and so do the parameters.
    no_data = ckpt.restore(fresh_state(setup))
    no_data, _ = train_loop(no_data, setup.step_fn, iter(setup.dataset), k)
    assert not tree_equal(no_data.params, full_state.params)
    ckpt.close()


def test_only_the_last_max_to_keep_checkpoints_remain(tmp_path):
    setup = shared_setup()
    ckpt = Checkpointer(str(tmp_path / "keep"), max_to_keep=2)
    train_loop(fresh_state(setup), setup.step_fn, iter(setup.dataset), 4, checkpointer=ckpt, checkpoint_every=1)
    assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
    ckpt.close()


def corrupt_at(iterator, bad_step, vocab_size):
    """Yield batches; the `bad_step`-th (1-based) has an out-of-vocabulary token (its embedding is NaN)."""
    for i in itertools.count(1):
        batch = dict(next(iterator))
        if i == bad_step:
            batch["tokens"] = batch["tokens"].copy()
            batch["tokens"][0, 1] = vocab_size + 1000
        yield batch


def test_non_finite_loss_stops_with_the_step_and_writes_no_nan_checkpoint(tmp_path):
    setup = shared_setup()
    ckpt = Checkpointer(str(tmp_path / "nan"), max_to_keep=10)
    batches = corrupt_at(iter(setup.dataset), 3, setup.model_config.vocab_size)
    with pytest.raises(NonFiniteLossError, match="at step 3") as info:
        train_loop(fresh_state(setup), setup.step_fn, batches, 6, checkpointer=ckpt, checkpoint_every=1)
    assert info.value.step == 3
    assert ckpt.all_steps() == [1, 2]
    restored = ckpt.restore(fresh_state(setup))
    assert int(restored.step) == 2
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(restored.params))
    ckpt.close()


def test_checkpointer_refuses_a_state_holding_nan(tmp_path):
    setup = shared_setup()
    ckpt = Checkpointer(str(tmp_path / "refuse"))
    state = setup.state.replace(params=jax.tree.map(lambda x: x * jnp.nan, setup.state.params))
    with pytest.raises(NonFiniteStateError, match="step 7"):
        ckpt.save(7, state)
    assert ckpt.all_steps() == []
    ckpt.close()
