"""DGG ratio statistics: hand-computed energy_ratio / dwd values, and the trainer stops reuse once the gate fires."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxrl_llm.objectives as obj
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.objectives.dgg import dwd_ratio, first_pass_ratio, relative_update_norms
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.train.rl_batch import RolloutBatch
from jaxrl_llm.train.rl_update import (
    RLUpdateOptions,
    dwd_metrics,
    make_rl_update,
    rl_optimizer,
)
from jaxrl_llm.train.state import TrainState

# Accepted ratios of earlier batches: mean 1.0, population std sqrt(0.02) = 0.141421.
RATIO_WINDOW = [1.0, 1.2, 0.8, 1.1, 0.9]


def head_grads(head):
    return {"layers": {"mlp": jnp.ones((2, 2))}, "lm_head": {"kernel": jnp.asarray(head, jnp.float32)}}


def full_state(values, first_value):
    state = obj.dgg_init(len(values))
    return state._replace(window=jnp.asarray(values, jnp.float32), count=jnp.int32(len(values)),
                          first_value=jnp.float32(first_value))


def test_energy_ratio_divides_by_the_batch_first_pass_hand_values():
    # Pass 1: head gradient [[3, 4]] -> g_1 = 25, remembered; never gated, not pushed.
    state = full_state(RATIO_WINDOW, first_value=0.0)
    gated, state, m = obj.dgg_gate(head_grads([[3.0, 4.0]]), state, 1, tau=2.0, statistic="energy_ratio")
    assert not bool(gated) and float(state.first_value) == 25.0 and int(state.count) == 5
    # Pass 2: [[6, 8]] -> g = 100, ratio 4, z = (4 - 1) / 0.141421 = 21.2132 > 2: gated, not pushed.
    # (The centre is the on-policy value 1, here also the window's mean.)
    gated, after, m = obj.dgg_gate(head_grads([[6.0, 8.0]]), state, 2, tau=2.0, statistic="energy_ratio")
    np.testing.assert_allclose(float(m["dgg/stat"]), 4.0, rtol=1e-6)
    np.testing.assert_allclose(float(m["dgg/z"]), 21.2132, rtol=1e-5)
    assert bool(gated) and int(after.count) == 5
    # Pass 2 instead with g = 27.5 (ratio 1.1): z = 0.1 / 0.141421 = 0.707107 -> accepted and pushed.
    head = [[np.sqrt(27.5), 0.0]]
    gated, after, m = obj.dgg_gate(head_grads(head), state, 2, tau=2.0, statistic="energy_ratio")
    np.testing.assert_allclose(float(m["dgg/z"]), 0.707107, rtol=1e-5)
    assert not bool(gated) and int(after.count) == 6
    np.testing.assert_allclose(float(after.window[0]), 1.1, rtol=1e-6)
    assert float(after.first_value) == 25.0  # the reference holds for the whole batch
    np.testing.assert_allclose(float(first_pass_ratio(jnp.float32(5.0), jnp.float32(2.0))), 2.5)
    # A zero first pass (no gradient, or the zero step at learning rate 0) is neutral, never inf.
    assert float(first_pass_ratio(jnp.float32(5.0), jnp.float32(0.0))) == 1.0


def test_ratio_z_is_centred_on_the_on_policy_value_not_the_window_mean():
    # Window mean 0.5, std 0.1: a ratio of 1.05 is 5.5 std above the mean but only 0.5 above 1.
    state = full_state([0.4, 0.6, 0.4, 0.6], first_value=25.0)
    head = [[np.sqrt(25.0 * 1.05), 0.0]]
    gated, _, m = obj.dgg_gate(head_grads(head), state, 2, tau=1.0, statistic="energy_ratio")
    np.testing.assert_allclose(float(m["dgg/z"]), 0.5, rtol=1e-4)
    assert not bool(gated)


def dwd_case(head_step):
    """Head W = [[3, 4]] (norm 5), inner matrix 2 x I (norm 2 sqrt 2), a norm gain (left out)."""
    params = {"lm_head": jnp.array([[3.0, 4.0]]), "layer": {"w": 2.0 * jnp.eye(2), "norm": jnp.ones(2)}}
    step = {"lm_head": jnp.array([head_step]), "layer": {"w": 0.02 * jnp.eye(2), "norm": jnp.full(2, 100.0)}}
    return step, params


def test_relative_update_norms_and_dwd_hand_values():
    step, params = dwd_case([0.3, 0.4])
    head, inner = relative_update_norms(step, params)
    np.testing.assert_allclose(float(head), 0.5 / 5.0, rtol=1e-6)  # 0.1
    np.testing.assert_allclose(float(inner), 0.02 * np.sqrt(2) / (2 * np.sqrt(2)), rtol=1e-6)  # 0.01
    np.testing.assert_allclose(float(dwd_ratio(step, params)), 10.0, rtol=1e-5)


def test_dwd_statistic_is_the_ratio_to_the_first_pass_and_needs_the_proposed_update():
    grads = head_grads([[1.0, 0.0]])
    first_step, params = dwd_case([0.3, 0.4])  # dwd 10
    later_step, _ = dwd_case([0.75, 1.0])  # head 1.25 / 5 = 0.25, dwd 25
    state = full_state(RATIO_WINDOW, first_value=0.0)
    _, state, _ = obj.dgg_gate(grads, state, 1, tau=2.0, statistic="dwd", proposed=first_step, params=params)
    np.testing.assert_allclose(float(state.first_value), 10.0, rtol=1e-5)
    gated, _, m = obj.dgg_gate(grads, state, 2, tau=2.0, statistic="dwd", proposed=later_step, params=params)
    np.testing.assert_allclose(float(m["dgg/stat"]), 2.5, rtol=1e-5)
    np.testing.assert_allclose(float(m["dgg/z"]), 1.5 / np.sqrt(0.02), rtol=1e-4)
    assert bool(gated)
    with pytest.raises(ValueError, match="proposed= and params="):
        obj.dgg_gate(grads, state, 2, statistic="dwd")
    with pytest.raises(ValueError, match="statistic must be one of"):
        obj.dgg_gate(grads, state, 2, statistic="drift")
    with pytest.raises(ValueError, match="rl.dgg.statistic must be one of"):
        RLUpdateOptions(dgg_statistic="ratio")


def test_dwd_metrics_from_per_pass_values():
    # K = 2 passes, M = 2 minibatches; the second minibatch's pass 2 was gated (not applied).
    per_step = {"applied": jnp.array([[1.0, 1.0], [1.0, 0.0]]), "executed": jnp.ones((2, 2)),
                "head_rel": jnp.array([[0.2, 0.4], [0.6, 0.0]]), "inner_rel": jnp.array([[0.1, 0.1], [0.1, 0.1]]),
                "lmhead_energy": jnp.array([[2.0, 4.0], [3.0, 1.0]])}
    m = dwd_metrics(per_step)
    np.testing.assert_allclose(float(m["dwd/ratio"]), (2 + 4 + 6) / 3, rtol=1e-5)
    np.testing.assert_allclose(float(m["dwd/ratio_first"]), 3.0, rtol=1e-5)
    np.testing.assert_allclose(float(m["dwd/ratio_reuse_max"]), 6.0, rtol=1e-5)
    np.testing.assert_allclose(float(m["dwd/energy_ratio_max"]), 1.5, rtol=1e-6)  # 3 / 2
    np.testing.assert_allclose(float(m["dwd/energy_ratio_last"]), (1.5 + 0.25) / 2, rtol=1e-6)


B, T, PROMPT = 8, 8, 3


@functools.cache
def model():
    cfg = preset("tiny", vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=16)
    parts, params, rest, _ = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), make_mesh(1, 1, 1))
    return parts, params, rest


def make_batch(seed=0):
    """Rows: a 3-token prompt, a 1-5 token response, padding; old log-probs arbitrary near zero."""
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 3, 5, 2, 4, 5, 1, 3])
    slot = np.arange(T)[None]
    valid = slot < PROMPT + lengths[:, None]
    tokens = np.where(valid, rng.integers(3, 32, size=(B, T)), 0).astype(np.int32)
    mask = (valid & (slot >= PROMPT)).astype(np.float32)
    old = (-3.0 + rng.normal(0, 0.1, (B, T))).astype(np.float32) * mask
    return RolloutBatch(tokens=tokens, positions=np.where(valid, slot, 0).astype(np.int32),
                        segment_ids=valid.astype(np.int32), loss_mask=mask, old_logprobs=old, rollout_logprobs=old,
                        rewards=rng.integers(0, 2, size=B).astype(np.float32),
                        group_ids=np.repeat(np.arange(B // 2), 2).astype(np.int32),
                        advantages=rng.normal(size=B).astype(np.float32))


@functools.cache
def run_update(statistic, reuse_epochs, tau, window=(0.9, 1.1, 0.9, 1.1)):
    """One trainer update from a fresh Adam state whose gate window is `window` (full)."""
    parts, params, rest = model()
    opts = RLUpdateOptions(objective="grpo", logprob_chunk=8, reuse_epochs=reuse_epochs, minibatches=2,
                           dgg_statistic=statistic, dgg_tau=tau, dgg_window=len(window))
    optimizer = rl_optimizer(optax.adam(1e-2), opts)
    params = jax.tree.map(jnp.copy, params)
    opt_state = optimizer.init(params)
    opt_state = opt_state._replace(gate=opt_state.gate._replace(window=jnp.asarray(window, jnp.float32),
                                                                count=jnp.int32(len(window))))
    state = TrainState(params=params, opt_state=opt_state, step=jnp.int32(0),
                       rng=jax.random.key_data(jax.random.key(0)), extras={})
    return make_rl_update(parts, optimizer, opts, rest=rest)(state, make_batch())


def bitwise_equal(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in pairs)


@pytest.mark.parametrize("statistic", ["energy_ratio", "dwd"])
def test_trainer_skips_the_rest_of_the_batch_once_the_gate_fires(statistic):
    # tau far below any z: the gate fires at its first test, pass 2 of minibatch 0, and every later
    # step of the batch is a no-op.
    gated, metrics = run_update(statistic, 4, -1e9)
    once, _ = run_update("energy_ratio", 1, -1e9)
    assert float(metrics["gate/events"]) == 1.0 and float(metrics["gate/stopped"]) == 1.0
    assert float(metrics["reuse/steps_applied"]) == 2.0 and float(metrics["reuse/epochs_used"]) == 1.0
    # The state after the gated update is the state after the one on-policy pass, bit for bit.
    assert bitwise_equal(gated.params, once.params)
    assert bitwise_equal(gated.opt_state.inner, once.opt_state.inner)
    assert int(gated.opt_state.inner[0].count) == 2  # Adam's step count: the two pass-1 minibatch steps
    assert int(gated.opt_state.gate.count) == 4  # the gated ratio never enters the window
    np.testing.assert_allclose(float(metrics["gate/z"]), (float(metrics["gate/stat_max"]) - 1.0) / 0.1, rtol=1e-4)


def test_trainer_keeps_reusing_while_the_ratio_stays_in_the_window():
    # A wide window: no realistic ratio is 1000 standard deviations above 1.
    _, metrics = run_update("energy_ratio", 3, 2.0, window=(-1e3, 1e3, -1e3, 1e3))
    assert float(metrics["gate/events"]) == 0.0 and float(metrics["reuse/steps_applied"]) == 6.0
    assert float(metrics["gate/stat_max"]) > 0.0
