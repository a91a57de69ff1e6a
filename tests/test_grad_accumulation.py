"""RL gradient accumulation (`rl.micro_batches`): the micro-batched gradient, loss and metrics equal
the un-split minibatch's for every kind of objective aggregation, and the full DGG-gated update too."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.batch import merge_strided, split_strided
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.train.rl import check_rl_config
from jaxrl_llm.train.rl_batch import RolloutBatch
from jaxrl_llm.train.rl_update import (RLUpdateOptions, make_logprob_fn, make_pass_fn, make_rl_grad,
                                       make_rl_update, rl_optimizer)
from jaxrl_llm.train.optim import MasterWeightsState, make_optimizer
from jaxrl_llm.train.state import TrainState, create_train_state

B, T, PROMPT, V, K_STEPS, TOPK = 8, 8, 3, 32, 3, 4
LENGTHS = (5, 3, 5, 2, 4, 5, 1, 3)


@functools.lru_cache(maxsize=None)
def model(value_head=False, param_dtype="float32"):
    cfg = preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=1, head_dim=16, value_head=value_head, param_dtype=param_dtype)
    parts, params, rest, _ = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), make_mesh(1, 1, 1))
    return parts, params, rest


@functools.lru_cache(maxsize=None)
def make_batch(seed=0, value_head=False):
    """Rows `[prompt | response | padding]` in 4 groups of 2, with every optional input an objective reads."""
    rng = np.random.default_rng(seed)
    parts, params, rest = model(value_head)
    tokens = rng.integers(3, V, size=(B, T)).astype(np.int32)
    slot = np.arange(T)[None]
    valid = slot < PROMPT + np.asarray(LENGTHS)[:, None]
    tokens = np.where(valid, tokens, 0).astype(np.int32)
    positions = np.where(valid, slot, 0).astype(np.int32)
    segments = valid.astype(np.int32)
    mask = (valid & (slot >= PROMPT)).astype(np.float32)
    logp, _ = make_logprob_fn(parts, chunk_size=8)(params, rest, tokens, positions, segments)

    def near_policy(scale):
        return ((np.asarray(logp) + rng.normal(0, scale, (B, T))) * mask).astype(np.float32)

    top = make_pass_fn(parts, chunk_size=8, topk=TOPK)(params, rest, tokens, positions, segments)
    step_id = np.where(mask > 0, (slot - PROMPT) % K_STEPS, -1).astype(np.int32)
    extra = {}
    if value_head:
        extra = {"old_values": rng.normal(0, 0.3, (B, T)).astype(np.float32) * mask,
                 "returns": rng.normal(0, 1.0, (B, T)).astype(np.float32) * mask}
    return RolloutBatch(
        tokens=tokens, positions=positions, segment_ids=segments, loss_mask=mask,
        old_logprobs=near_policy(0.1), rollout_logprobs=near_policy(0.15),
        rewards=rng.integers(0, 2, size=B).astype(np.float32),
        group_ids=np.repeat(np.arange(B // 2), 2).astype(np.int32),
        advantages=rng.normal(size=B).astype(np.float32),
        ref_logprobs=near_policy(0.2), teacher_logprobs=near_policy(0.5),
        teacher_topk_idx=np.asarray(top["topk_idx"]), teacher_topk_logp=np.asarray(top["topk_logp"]) - 0.3,
        step_id=step_id, step_ok=rng.integers(0, 2, size=(B, K_STEPS)).astype(bool), **extra)


def options(objective, kwargs=(), **kw):
    return RLUpdateOptions(objective=objective, objective_kwargs=tuple(sorted(dict(kwargs).items())),
                           logprob_chunk=8, **kw)


# (objective, kwargs, extra options): one per way a loss couples the rows of a minibatch.
CASES = {
    "grpo-token-mean": ("grpo", {}, {}),
    "grpo-seq-mean-token-mean": ("grpo", {"loss_agg_mode": "seq-mean-token-mean"}, {}),
    "grpo-seq-mean-token-sum": ("grpo", {"loss_agg_mode": "seq-mean-token-sum"}, {}),
    "drgrpo-seq-mean-token-sum-norm": ("drgrpo", {"norm_length": 5.0}, {}),
    "gspo-sequence-ratio": ("gspo", {"clip_low": 0.2, "clip_high": 0.2}, {}),
    "dapo-clip-higher": ("dapo", {}, {}),
    "tbpo-rollout-logprobs": ("tbpo", {}, {}),
    "grpo-reference-kl-and-entropy": ("grpo", {"kl_coef": 0.1, "entropy_coef": 0.01}, {}),
    "sdar-teacher": ("sdar", {}, {}),
    "opd-teacher": ("opd", {}, {}),
    "aopd-student-logits-topk-teacher": ("aopd", {}, {"student_logits": True}),
    "bcpg-nsa-group-advantages-in-loss": ("bcpg_nsa", {}, {"num_groups": B // 2}),
    "grpo-with-critic": ("grpo", {}, {"critic": True}),
}


def tree_close(a, b, *, rtol=2e-5, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_merge_strided_inverts_split_strided():
    x = {"a": jnp.arange(24).reshape(8, 3), "b": jnp.arange(8)}
    split = split_strided(x, 4)
    np.testing.assert_array_equal(np.asarray(split["b"][1]), [1, 5])
    for got, want in zip(jax.tree.leaves(merge_strided(split)), jax.tree.leaves(x)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("case", list(CASES))
def test_micro_batched_gradient_equals_the_unsplit_minibatch(case):
    objective, kwargs, extra = CASES[case]
    critic = extra.get("critic", False)
    parts, params, rest = model(critic)
    batch = jax.tree.map(jnp.asarray, make_batch(value_head=critic))
    whole = jax.jit(make_rl_grad(parts, options(objective, kwargs, **extra)))
    split = jax.jit(make_rl_grad(parts, options(objective, kwargs, micro_batches=4, **extra)))
    (loss1, (metrics1, ent1)), g1 = whole(params, rest, batch)
    (loss4, (metrics4, ent4)), g4 = split(params, rest, batch)
    norm = float(optax.tree.norm(g1))
    assert norm > 1e-4, f"{case}: a vacuous comparison (zero gradient)"
    np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(ent4), float(ent1), rtol=1e-5)
    assert sorted(metrics4) == sorted(metrics1)
    tree_close(metrics4, metrics1, rtol=1e-5, atol=1e-6)
    # Every gradient entry agrees to float32 rounding of the whole gradient's scale.
    tree_close(g4, g1, rtol=1e-4, atol=1e-6 * norm)
    np.testing.assert_allclose(float(optax.tree.norm(g4)), norm, rtol=1e-5)


def test_naive_per_micro_batch_averaging_would_differ_for_a_group_normalised_loss():
    """Why the objective sees the whole minibatch: averaging bcpg_nsa over strided micro-batches (its
    groups then split) gives another gradient; the accumulated one is the un-split gradient."""
    parts, params, rest = model()
    batch = jax.tree.map(jnp.asarray, make_batch())
    opts = options("bcpg_nsa", {}, num_groups=B // 2)
    grad = jax.jit(make_rl_grad(parts, opts))
    _, full = grad(params, rest, batch)
    halves = [jax.tree.map(lambda x, m=m: x[m::2], batch) for m in (0, 1)]
    naive = jax.tree.map(lambda a, b: (a + b) / 2, *(grad(params, rest, h)[1] for h in halves))
    _, accumulated = jax.jit(make_rl_grad(parts, options("bcpg_nsa", {}, num_groups=B // 2, micro_batches=2)))(
        params, rest, batch)
    gap = float(optax.tree.norm(jax.tree.map(jnp.subtract, naive, full)))
    assert gap > 1e-2 * float(optax.tree.norm(full))
    tree_close(accumulated, full, rtol=1e-4, atol=1e-6 * float(optax.tree.norm(full)))


SGD = optax.sgd(0.5, momentum=0.9)  # Adam's first step ~ lr * sign(g) would amplify float noise


def fresh_state(opt, opts, params):
    params = jax.tree.map(jnp.copy, params)
    return TrainState(params=params, opt_state=rl_optimizer(opt, opts).init(params), step=jnp.int32(0),
                      rng=jax.random.key_data(jax.random.key(0)), extras={})


@pytest.mark.parametrize("objective, kwargs", [("grpo", {}), ("gspo", {"clip_low": 0.2, "clip_high": 0.2})])
def test_dgg_gated_update_with_reuse_and_minibatches_equals_the_unsplit_update(objective, kwargs):
    parts, params, rest = model()
    batch = make_batch(1)
    results = {}
    for u in (1, 2):
        opts = options(objective, kwargs, reuse_epochs=3, minibatches=2, micro_batches=u, dgg=True, dgg_tau=0.0,
                       dgg_window=2, dgg_statistic="energy_ratio")
        fn = make_rl_update(parts, rl_optimizer(SGD, opts), opts, rest=rest)
        results[u] = fn(fresh_state(SGD, opts, params), batch)
    (s1, m1), (s2, m2) = results[1], results[2]
    assert sorted(m1) == sorted(m2)
    assert float(m1["reuse/steps_applied"]) > 0
    for key in m1:  # loss, grad_norm, gate/lmhead_energy, gate/z, dwd/*, the objective's metrics
        np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-4, atol=1e-6, err_msg=key)
    assert float(m2["gate/events"]) == float(m1["gate/events"])
    tree_close(s2.params, s1.params, rtol=1e-4, atol=1e-6)
    # The gate's statistics (head-gradient energies per minibatch, window, first-pass values) agree too.
    tree_close(s2.opt_state, s1.opt_state, rtol=1e-4, atol=1e-6)


def test_micro_batches_on_a_sharded_mesh_equal_the_unsplit_update():
    mesh = make_mesh(2, 2, 2)
    cfg = preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=2, head_dim=16)
    parts, params, rest, param_shardings = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    batch = make_batch(2)
    results = {}
    for u in (1, 2):  # 8 rows -> 2 micro-batches of 4 rows on the 4 row shards (data x fsdp)
        opts = options("grpo", {}, micro_batches=u, dgg=False)
        params_copy = jax.tree.map(jnp.copy, params)
        state = create_train_state(params_copy, rl_optimizer(SGD, opts), mesh, param_shardings, seed=0)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        fn = make_rl_update(parts, rl_optimizer(SGD, opts), opts, rest=rest, mesh=mesh, state_shardings=shardings)
        results[u] = fn(state, batch)
    (s1, m1), (s2, m2) = results[1], results[2]
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    tree_close(s2.params, s1.params, rtol=1e-4, atol=1e-6)
    assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s1.params)))


def test_micro_batched_update_with_bf16_params_and_master_weights():
    """The DGG-gated, micro-batched update around `make_optimizer(master_weights=True)`: bf16 params
    that are the rounding of the fp32 copy and fp32 moments, with or without micro-batches."""
    parts, params, rest = model(param_dtype="bfloat16")
    adamw = make_optimizer({"learning_rate": 1e-3, "warmup_steps": 0, "end_learning_rate_ratio": 1.0,
                            "weight_decay": 0.01, "master_weights": True}, 10)
    results = {}
    for u in (1, 2):
        opts = options("grpo", {}, reuse_epochs=2, micro_batches=u, dgg=True, dgg_window=2)
        results[u] = make_rl_update(parts, rl_optimizer(adamw, opts), opts, rest=rest)(
            fresh_state(adamw, opts, params), make_batch(3))
    for u, (state, metrics) in results.items():
        assert float(metrics["reuse/steps_applied"]) == 2.0
        master = state.opt_state.inner
        assert isinstance(master, MasterWeightsState)
        for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(master.master), strict=True):
            assert p.dtype == jnp.bfloat16 and m.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(p), np.asarray(m.astype(jnp.bfloat16)))
        assert {x.dtype for x in jax.tree.leaves(master.inner) if jnp.issubdtype(x.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)}
    # Close, not bitwise: Adam's ~lr * sign(g) steps turn rounding-level differences of near-zero
    # gradient entries into lr-sized ones (the fp32 equality of the update is tested above).
    np.testing.assert_allclose(float(results[2][1]["loss"]), float(results[1][1]["loss"]), rtol=1e-2, atol=1e-4)


def rl_config(**overrides):
    cfg = load_config_file("configs/quickstart.py")
    small = {"sft.train.steps": "0", "rl.prompts_per_step": "4", "rl.samples_per_prompt": "2", "mesh.fsdp": "1",
             "eval.num_problems": "0"}
    for key, value in {**small, **overrides}.items():
        apply_override(cfg, key, value)
    return cfg


@pytest.mark.parametrize("overrides, match", [
    ({"rl.minibatches": "2", "rl.micro_batches": "3"},
     (r"rl.micro_batches=3 must divide the rows per minibatch: prompts_per_step x samples_per_prompt / "
      r"rl.minibatches = 8 / 2 = 4")),
    ({"rl.micro_batches": "0"}, r"rl.micro_batches must be an integer >= 1; got 0"),
    ({"mesh.fsdp": "2", "rl.micro_batches": "8"},
     r"rows per minibatch / rl.micro_batches = 8 / 8 = 1 rows must be a multiple of the mesh's 2 row shards"),
])
def test_bad_micro_batches_fail_the_config_check_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        check_rl_config(rl_config(**overrides))


def test_config_micro_batches_reach_the_update_options_and_bad_rows_fail_before_compiling():
    from jaxrl_llm.train.rl import update_options

    check_rl_config(rl_config(**{"rl.micro_batches": "4"}))
    assert update_options(rl_config(**{"rl.micro_batches": "4"})).micro_batches == 4
    assert update_options(rl_config()).micro_batches == 1
    with pytest.raises(ValueError, match="rl.micro_batches must be >= 1"):
        RLUpdateOptions(micro_batches=0)
    parts, params, rest = model()
    opts = options("grpo", {}, micro_batches=3, dgg=False)
    fn = make_rl_update(parts, rl_optimizer(SGD, opts), opts, rest=rest)
    with pytest.raises(ValueError, match=r"rl.micro_batches=3 must divide the rows per minibatch: 8 batch rows / "
                                         r"rl.minibatches=1 = 8"):
        fn(fresh_state(SGD, opts, params), make_batch())
