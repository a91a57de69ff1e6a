"""Optimizer dtypes: fp32 moments for bf16 params (`optimizer.state_dtype`), fp32 master weights
(`optimizer.master_weights`), their shardings, an SFT run from the CLI and a checkpoint round trip."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm import cli
from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.optim import MasterWeightsState, make_optimizer
from jaxrl_llm.train.rl import check_rl_config
from jaxrl_llm.train.sft_run import check_sft_config, setup_sft

BASE = {"learning_rate": 1e-3, "warmup_steps": 0, "end_learning_rate_ratio": 1.0, "b1": 0.9, "b2": 0.95,
        "eps": 1e-8, "weight_decay": 0.1, "grad_clip_norm": 1.0}


def params_tree(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "b": jnp.asarray(rng.normal(size=(3,)), dtype)}


def float_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def run(tx, params, grads_seq):
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g in grads_seq:
        params, state = step(params, state, g)
    return params, state


def grads(dtype, n=5):
    return [params_tree(dtype, seed=10 + i) for i in range(n)]


def test_state_leaves_are_float32_with_bf16_params():
    params = params_tree(jnp.bfloat16)
    plain = make_optimizer(BASE, 10).init(params)
    assert {x.dtype for x in float_leaves(plain)} == {jnp.dtype(jnp.bfloat16)}  # today: moments in bf16
    for fields in ({"state_dtype": "float32"}, {"master_weights": True}, {"state_dtype": "float32",
                                                                          "master_weights": True}):
        tx = make_optimizer({**BASE, **fields}, 10)
        state = tx.init(params)
        assert {x.dtype for x in float_leaves(state)} == {jnp.dtype(jnp.float32)}, fields
        new_params, state = run(tx, params, grads(jnp.bfloat16, 2))
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new_params))
        assert {x.dtype for x in float_leaves(state)} == {jnp.dtype(jnp.float32)}
    master = make_optimizer({**BASE, "master_weights": True}, 10).init(params)
    assert isinstance(master, MasterWeightsState)
    for m, p in zip(jax.tree.leaves(master.master), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(m), np.asarray(p, np.float32))


def adam_master_float64(p0, g, lr, b1, b2, eps, steps):
    """Float64 Adam on a constant gradient: the trajectory the fp32 master copy follows."""
    p, m, v = np.float64(p0), 0.0, 0.0
    for t in range(1, steps + 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def test_master_weights_keep_tiny_updates_that_bf16_params_round_away():
    cfg = {**BASE, "learning_rate": 1e-4, "weight_decay": 0.0, "grad_clip_norm": 0.0}
    params = {"w": jnp.ones((8,), jnp.bfloat16)}
    # Adam steps ~ lr = 1e-4 each, far below half the bf16 spacing at 1.0 (2^-9).
    g = [{"w": jnp.full((8,), 0.5, jnp.bfloat16)}] * 100
    plain, _ = run(make_optimizer(cfg, 100), params, g)
    fp32_state, _ = run(make_optimizer({**cfg, "state_dtype": "float32"}, 100), params, g)
    kept, state = run(make_optimizer({**cfg, "master_weights": True}, 100), params, g)
    # Without a master copy every 1e-4 step rounds back to 1.0: the parameter never moves.
    np.testing.assert_array_equal(np.asarray(plain["w"], np.float32), 1.0)
    np.testing.assert_array_equal(np.asarray(fp32_state["w"], np.float32), 1.0)
    want = adam_master_float64(1.0, 0.5, 1e-4, BASE["b1"], BASE["b2"], BASE["eps"], 100)
    assert want == pytest.approx(0.99, abs=1e-6)
    # fp32 accumulation: at most half an fp32 spacing (2^-24 just below 1) of rounding per step.
    np.testing.assert_allclose(np.asarray(state.master["w"]), want, rtol=0, atol=100 * 2.0 ** -25)
    # The stored parameter is the bf16 rounding of the master value (0.99 -> 0.98828125, spacing 2^-8), not 1.0.
    np.testing.assert_array_equal(np.asarray(kept["w"]), np.asarray(state.master["w"].astype(jnp.bfloat16)))
    np.testing.assert_array_equal(np.asarray(kept["w"], np.float32), 0.98828125)


def test_float32_state_with_float32_params_equals_todays_optimizer_exactly():
    params, g = params_tree(jnp.float32), grads(jnp.float32)
    p_ref, s_ref = run(make_optimizer(BASE, 10), params, g)
    p32, s32 = run(make_optimizer({**BASE, "state_dtype": "float32"}, 10), params, g)
    assert jax.tree.structure(s32) == jax.tree.structure(s_ref)
    for a, b in zip(jax.tree.leaves((p32, s32)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Master weights on fp32 params: the same params bit for bit, and the copy equals them.
    pm, sm = run(make_optimizer({**BASE, "master_weights": True}, 10), params, g)
    for a, b in zip(jax.tree.leaves((pm, sm.inner)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(sm.master), jax.tree.leaves(pm)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def sft_config(**overrides):
    cfg = load_config_file("configs/sft_tiny.py")
    small = {"model.hidden_size": "32", "model.intermediate_size": "64", "model.num_layers": "1",
             "model.head_dim": "8", "data.num_train": "64", "train.batch_size": "8", "eval.num_problems": "0",
             "mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2", "train.progress_bar": "false"}
    for key, value in {**small, **overrides}.items():
        apply_override(cfg, key, value)
    return cfg


@pytest.mark.parametrize("field, value, match", [
    ("optimizer.state_dtype", "bfloat16", r"optimizer.state_dtype must be one of \('', 'float32'\)"),
    ("optimizer.state_dtype", "fp32", r"optimizer.state_dtype must be one of"),
])
def test_bad_dtype_fields_fail_the_config_checks_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        check_sft_config(sft_config(**{field: value}))
    rl = load_config_file("configs/quickstart.py")
    for key, v in {"sft.train.steps": "0", "mesh.fsdp": "1", "rl.prompts_per_step": "4", "eval.num_problems": "0",
                   f"rl.{field}": value}.items():
        apply_override(rl, key, v)
    with pytest.raises(ValueError, match="rl." + match):
        check_rl_config(rl)
    with pytest.raises(ValueError, match=r"optimizer.master_weights must be true or false; got 'yes'"):
        make_optimizer({**BASE, "master_weights": "yes"}, 10)


MIXED = {"model.param_dtype": "bfloat16", "optimizer.state_dtype": "float32", "optimizer.master_weights": "true"}


@pytest.mark.slow
def test_sft_cli_run_with_bf16_params_and_master_weights_and_its_checkpoint_round_trip(tmp_path):
    out = tmp_path / "run"
    args = [f"--config.{k}={v}" for k, v in {**MIXED, "train.steps": "2", "train.log_every": "1",
                                              "output_dir": str(out)}.items()]
    assert cli.main(["sft", "--config", "configs/sft_tiny.py", "--config.model.hidden_size=32",
                     "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=8",
                     "--config.data.num_train=64", "--config.train.batch_size=8", "--config.eval.num_problems=0",
                     "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                     "--config.train.progress_bar=false", *args]) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))

    # The same config's state is the restore target: the checkpoint's structure, dtypes and shardings.
    setup = setup_sft(sft_config(**MIXED, **{"train.steps": "2"}))
    like = setup.state
    assert isinstance(like.opt_state, MasterWeightsState)
    for p, m in zip(jax.tree.leaves(like.params), jax.tree.leaves(like.opt_state.master)):
        assert p.dtype == jnp.bfloat16 and m.dtype == jnp.float32
        assert m.sharding == p.sharding  # the master copy is sharded like its parameter
    mu = like.opt_state.inner[1][0].mu  # (clip, (adam, decay, schedule)) inside the master wrapper
    q = like.params["layers"][0]["mixer"]["q_proj"]
    assert mu["layers"][0]["mixer"]["q_proj"].sharding.spec == q.sharding.spec == jax.P("fsdp", "tensor")
    assert mu["layers"][0]["mixer"]["q_proj"].dtype == jnp.float32

    ckpt = Checkpointer(str(out / "checkpoints"))
    restored = ckpt.restore(like)
    ckpt.close()
    assert int(restored.step) == 2
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(like)):
        assert a.dtype == b.dtype and a.sharding == b.sharding
    # Two steps moved the master copy; the stored bf16 params are exactly its rounding.
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(restored.opt_state.master), jax.tree.leaves(like.opt_state.master)))
    for p, m in zip(jax.tree.leaves(restored.params), jax.tree.leaves(restored.opt_state.master)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(m.astype(jnp.bfloat16)))

    # Save and restore again: bit for bit, then one more step runs from the restored state.
    again = Checkpointer(str(tmp_path / "again"))
    again.save(2, restored, force=True)
    back = again.restore(like)
    again.close()
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new_state, metrics = setup.step_fn(back, next(setup.iterator))
    assert float(metrics["finite"]) == 1.0 and int(new_state.step) == 3
    for p, m in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(new_state.opt_state.master)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(m.astype(jnp.bfloat16)))
