"""The jitted RL update: equals a hand-written optax step, DGG gating is bitwise, reuse = sequential steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.train.rl_batch import RolloutBatch, check_rollout_batch
from jaxrl_llm.train.rl_update import (RLUpdateOptions, make_logprob_fn, rl_optimizer,
                                       make_rl_update)
from jaxrl_llm.train.state import TrainState

B, T, PROMPT = 8, 8, 3


@functools.lru_cache(maxsize=None)
def model():
    cfg = preset("tiny", vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=16)
    mesh = make_mesh(1, 1, 1)
    parts, params, rest, _ = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    return parts, params, rest


@functools.lru_cache(maxsize=None)
def logprob_fn():
    return make_logprob_fn(model()[0], chunk_size=8)


def make_batch(seed=0, lengths=(5, 3, 5, 2, 4, 5, 1, 3)):
    """Rows: [prompt (3 tokens) | response of `lengths[i]` tokens | padding]; old log-probs near the policy's."""
    rng = np.random.default_rng(seed)
    parts, params, rest = model()
    tokens = rng.integers(3, 32, size=(B, T)).astype(np.int32)
    slot = np.arange(T)[None]
    valid = slot < PROMPT + np.asarray(lengths)[:, None]
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    positions = np.where(valid, slot, 0).astype(np.int32)
    mask = (valid & (slot >= PROMPT)).astype(np.float32)
    logp, _ = logprob_fn()(params, rest, tokens, positions, valid.astype(np.int32))
    old = (np.asarray(logp) + rng.normal(0, 0.1, (B, T)).astype(np.float32)) * mask
    rewards = rng.integers(0, 2, size=B).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    return RolloutBatch(tokens=tokens, positions=positions, segment_ids=valid.astype(np.int32), loss_mask=mask,
                        old_logprobs=old, rollout_logprobs=old, rewards=rewards,
                        group_ids=np.repeat(np.arange(B // 2), 2).astype(np.int32), advantages=adv)


OPT = optax.adam(1e-2)
# Adam's first step is ~lr * sign(g), which amplifies float noise in near-zero gradients; plain
# momentum SGD keeps the comparison with a hand-written step about the gradient itself.
SGD = optax.sgd(0.5, momentum=0.9)


def options(**kw):
    # tau = 0: the gate fires on any positive z once the window is full (tests fill it on purpose).
    return RLUpdateOptions(**{"objective": "grpo", "objective_kwargs": (("clip_low", 0.2),), "logprob_chunk": 8,
                              "dgg_tau": 0.0, "dgg_window": 4, **kw})


def fresh_state(gate=None, opt=OPT, **kw):
    """A state made by `rl_optimizer(opt, options(**kw))`; `gate` replaces DGG statistics fields."""
    params = jax.tree.map(jnp.copy, model()[1])
    opt_state = rl_optimizer(opt, options(**kw)).init(params)
    if gate is not None:
        opt_state = opt_state._replace(gate=opt_state.gate._replace(**gate))
    return TrainState(params=params, opt_state=opt_state, step=jnp.int32(0),
                      rng=jax.random.key_data(jax.random.key(0)), extras={})


def inner(opt_state):
    """The wrapped optimizer's own state (the DGG wrapper's `inner`, or the state itself)."""
    return getattr(opt_state, "inner", opt_state)


@functools.lru_cache(maxsize=None)
def update_fn(opt=OPT, **kw):
    parts, _, rest = model()
    opts = options(**kw)
    return make_rl_update(parts, rl_optimizer(opt, opts), opts, rest=rest)


def hand_loss(params, batch):
    """PPO-clip token-mean written out with a plain log_softmax over the full logits."""
    parts, _, rest = model()
    logits, _ = parts.merge(params, rest)(jnp.asarray(batch.tokens), jnp.asarray(batch.positions),
                                          segment_ids=jnp.asarray(batch.segment_ids))
    logp_all = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    logp = jnp.take_along_axis(logp_all, batch.tokens[:, 1:, None], axis=-1)[..., 0]
    logp = jnp.concatenate([jnp.zeros((B, 1)), logp], axis=1)
    ratio = jnp.exp(logp - batch.old_logprobs)
    adv = batch.advantages[:, None]
    per_token = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 0.8, 1.2))
    return jnp.sum(per_token * batch.loss_mask) / jnp.sum(batch.loss_mask)


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_single_epoch_grpo_equals_a_hand_written_optax_step():
    batch = make_batch()
    state = fresh_state(opt=SGD)
    loss, grads = jax.value_and_grad(hand_loss)(state.params, batch)
    updates, opt_ref = SGD.update(grads, inner(state.opt_state), state.params)
    params_ref = optax.apply_updates(state.params, updates)
    new, metrics = update_fn(SGD, reuse_epochs=1)(fresh_state(opt=SGD), batch)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6, atol=1e-7)
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(params_ref)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    for got, want in zip(jax.tree.leaves(inner(new.opt_state)), jax.tree.leaves(opt_ref)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert int(new.step) == 1
    assert float(metrics["reuse/epochs_used"]) == 1.0 and float(metrics["gate/events"]) == 0.0


def test_k_epochs_without_gate_equal_k_sequential_single_updates():
    batch = make_batch(1)
    reused, metrics = update_fn(reuse_epochs=3, dgg=False)(fresh_state(dgg=False), batch)
    single = update_fn(reuse_epochs=1, dgg=False)
    state = fresh_state(dgg=False)
    for _ in range(3):
        state, _ = single(state, batch)
    for got, want in zip(jax.tree.leaves((reused.params, reused.opt_state)),
                         jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(metrics["reuse/epochs_used"]) == 3.0 and float(metrics["reuse/steps_applied"]) == 3.0


def test_minibatches_are_strided_rows_each_one_optimizer_step():
    batch = make_batch(2)
    reused, metrics = update_fn(reuse_epochs=2, minibatches=2, dgg=False)(fresh_state(dgg=False), batch)
    halves = [jax.tree.map(lambda x, m=m: np.asarray(x)[m::2], batch) for m in (0, 1)]
    single = update_fn(reuse_epochs=1, dgg=False)
    state = fresh_state(dgg=False)
    for half in halves + halves:  # epoch 1: minibatch 0 then 1; epoch 2 again
        state, _ = single(state, half)
    for got, want in zip(jax.tree.leaves(reused.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(metrics["reuse/steps_applied"]) == 4.0


def crafted_window(n=4):
    """A full window far below any real increment: the gate fires at the first k > 1 step."""
    return {"window": jnp.asarray(-1000.0 + np.arange(n), jnp.float32), "count": jnp.int32(n)}


def test_forced_gate_skips_that_and_later_epochs_bitwise_and_reports_reuse():
    batch = make_batch(3)
    gated, metrics = update_fn(reuse_epochs=4)(fresh_state(gate=crafted_window()), batch)
    once, _ = update_fn(reuse_epochs=1)(fresh_state(gate=crafted_window()), batch)
    # Epoch 1 (never gated) applied; epoch 2 gated; epochs 3-4 no-ops: the state equals one step.
    assert leaves_equal(gated.params, once.params)
    assert leaves_equal(inner(gated.opt_state), inner(once.opt_state))
    assert int(inner(gated.opt_state)[0].count) == 1
    assert float(metrics["reuse/epochs_used"]) == 1.0
    assert float(metrics["gate/events"]) == 1.0 and float(metrics["gate/stopped"]) == 1.0
    assert float(metrics["gate/z"]) > 100.0
    gate = gated.opt_state.gate
    assert bool(gate.stopped) and int(gate.count) == 4  # the gated increment never enters the window
    np.testing.assert_array_equal(np.asarray(gate.window), np.asarray(crafted_window()["window"]))


def test_gate_never_fires_before_the_window_is_full():
    batch = make_batch(4)
    new, metrics = update_fn(reuse_epochs=4)(fresh_state(), batch)
    gate = new.opt_state.gate
    assert float(metrics["reuse/epochs_used"]) == 4.0 and float(metrics["gate/events"]) == 0.0
    assert int(gate.count) == 3  # one increment per pass k = 2, 3, 4: the window of 4 is not yet full
    assert int(inner(new.opt_state)[0].count) == 4


def test_masked_padding_tokens_do_not_change_the_update():
    batch = make_batch(5)
    rng = np.random.default_rng(9)
    off = batch.loss_mask == 0
    pad = batch.segment_ids == 0
    noisy = batch.replace(
        tokens=np.where(pad, rng.integers(3, 32, size=(B, T)), batch.tokens).astype(np.int32),
        old_logprobs=np.where(off, rng.normal(0, 50, (B, T)), batch.old_logprobs).astype(np.float32),
        rollout_logprobs=np.where(off, -7.0, batch.rollout_logprobs).astype(np.float32))
    fn = update_fn(reuse_epochs=1, dgg=False)
    a, ma = fn(fresh_state(dgg=False), batch)
    b, mb = fn(fresh_state(dgg=False), noisy)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-7)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), abs=1e-7)


def test_reference_kl_term_is_logged_and_matches_k3():
    batch = make_batch(6)
    ref = (batch.old_logprobs - 0.2) * batch.loss_mask
    parts, params, rest = model()
    logp, _ = logprob_fn()(params, rest, batch.tokens, batch.positions, batch.segment_ids)
    d = np.asarray(ref) - np.asarray(logp)
    k3 = np.sum((np.exp(d) - d - 1) * batch.loss_mask) / batch.loss_mask.sum()
    _, metrics = update_fn(reuse_epochs=1, objective_kwargs=(("kl_coef", 0.1),))(
        fresh_state(), batch.replace(ref_logprobs=ref))
    assert float(metrics["ref/kl"]) == pytest.approx(k3, rel=1e-5)
    assert float(metrics["ref/loss"]) == pytest.approx(0.1 * k3, rel=1e-5)


def test_a_sequence_level_objective_runs_through_the_same_update():
    batch = make_batch(7)
    new, metrics = update_fn(objective="tbpo", objective_kwargs=(), reuse_epochs=2, dgg=False)(
        fresh_state(dgg=False), batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["reuse/steps_applied"]) == 2.0
    assert 0.0 <= float(metrics["pg/frac_dropped_neg"]) <= 1.0
    assert not leaves_equal(new.params, model()[1])


def test_bad_batch_shapes_name_the_field():
    batch = make_batch()
    with pytest.raises(ValueError, match=r"old_logprobs must be \[B, T\] = \(8, 8\); got \(8, 7\)"):
        check_rollout_batch(batch.replace(old_logprobs=batch.old_logprobs[:, :7]))
    with pytest.raises(ValueError, match=r"advantages must be \[B\] or \[B, T\]"):
        check_rollout_batch(batch.replace(advantages=np.zeros((8, 3), np.float32)))
    with pytest.raises(ValueError, match="rl.reuse_epochs must be >= 1"):
        RLUpdateOptions(reuse_epochs=0)
    with pytest.raises(KeyError, match="unknown objective 'nope'"):
        RLUpdateOptions(objective="nope")
