"""LoRA / QLoRA: frozen (optionally int4 / int8) base + trainable adapters, merged for the sampler and export."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrl_llm import cli
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.models.lora import (LoraWeight, apply_lora, join_trainable, load_lora, lora_state, merge_lora,
                                   split_trainable, trainable_count, trainable_value_and_grad)
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import make_mesh
from jaxrl_llm.quant import QuantArray
from jaxrl_llm.rollout import SamplingConfig, token_batch
from jaxrl_llm.train.lora import LoraSpec, apply_lora_sharded, lora_spec, read_adapters, save_adapters
from jaxrl_llm.train.metrics import read_jsonl
from jaxrl_llm.train.rl_batch import RolloutBatch
from jaxrl_llm.train.rl_rollout import sample_responses
from jaxrl_llm.train.rl_update import RLUpdateOptions, make_logprob_fn, make_rl_update, policy_token_stats, rl_optimizer
from jaxrl_llm.train.state import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = preset("tiny", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
             num_kv_heads=1, head_dim=16)
TOKENS = jnp.array([[1, 5, 9, 13, 2, 7, 3, 11], [4, 4, 8, 15, 16, 23, 42, 0]], jnp.int32)
POSITIONS = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), TOKENS.shape)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@functools.lru_cache(maxsize=None)
def model(scale: float = 1.0):
    """`(parts, params, rest, shardings)` of the tiny decoder; `scale` multiplies the 2-D weights
    (x8 gives peaked next-token distributions, so quantization error shows in the log-probs)."""
    parts, params, rest, shardings = init_sharded(lambda: Decoder(CFG, rngs=nnx.Rngs(0)), make_mesh(1, 1, 1))
    params = jax.tree.map(lambda x: x * scale if x.ndim == 2 else x, params)
    return parts, params, rest, shardings


def logits(params, scale=1.0):
    parts, _, rest, _ = model(scale)
    return parts.merge(params, rest)(TOKENS, POSITIONS)[0]


def lora(params, base_quant="", rank=4, b_value=None, key=0):
    """`apply_lora` on the projections; `b_value` sets every b to N(0, b_value^2) (a trained adapter)."""
    out = apply_lora(params, rank=rank, alpha=8.0, base_quant=base_quant, key=jax.random.key(key))
    if b_value is None:
        return out
    trainable, frozen = split_trainable(out)
    keys = iter(jax.random.split(jax.random.key(key + 1), 64))
    trainable = jax.tree.map(lambda w: LoraWeight(None, w.a, b_value * jax.random.normal(next(keys), w.b.shape),
                                                  w.scale),
                             trainable, is_leaf=lambda x: isinstance(x, LoraWeight))
    return join_trainable(trainable, frozen)


def lora_leaves(params):
    return [x for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, LoraWeight))
            if isinstance(x, LoraWeight)]


def test_zero_b_lora_forward_equals_the_base_forward_exactly():
    _, params, _, _ = model()
    adapted = lora(params)
    leaves = lora_leaves(adapted)
    assert len(leaves) == 7 and all(float(jnp.abs(w.b).max()) == 0.0 and float(jnp.abs(w.a).max()) > 0 for w in leaves)
    np.testing.assert_array_equal(np.asarray(logits(adapted)), np.asarray(logits(params)))
    # int4 base: equal to the model whose projections are the same QuantArrays, bit for bit.
    quantized = lora(params, "int4")
    projections = jax.tree_util.tree_map_with_path(
        lambda path, x: x.base if isinstance(x, LoraWeight) else x, quantized,
        is_leaf=lambda x: isinstance(x, LoraWeight))
    assert isinstance(projections["layers"][0]["mixer"]["q_proj"], QuantArray)
    np.testing.assert_array_equal(np.asarray(logits(quantized)), np.asarray(logits(projections)))


@pytest.mark.parametrize("base_quant", ["", "int8", "int4"])
def test_merged_forward_equals_the_factored_adapter_forward(base_quant):
    _, params, _, _ = model()
    adapted = lora(params, base_quant, b_value=0.05)
    merged = merge_lora(adapted)
    assert not lora_leaves(merged)
    assert merged["embed"] is adapted["embed"] or np.array_equal(merged["embed"], adapted["embed"])
    w = adapted["layers"][0]["mlp"]["up_proj"]
    base = w.base if not base_quant else jnp.asarray(merged["layers"][0]["mlp"]["up_proj"]) - w.scale * (w.a @ w.b)
    # The merge is base + (alpha / rank) * a @ b, in float64 too.
    ref = np.asarray(base, np.float64) + 2.0 * np.asarray(w.a, np.float64) @ np.asarray(w.b, np.float64)
    np.testing.assert_allclose(np.asarray(merged["layers"][0]["mlp"]["up_proj"]), ref, atol=1e-6)
    out, out_merged = logits(adapted), logits(merged)
    assert float(jnp.abs(out - logits(params)).max()) > 1e-3  # the adapters change the model
    np.testing.assert_allclose(np.asarray(out_merged), np.asarray(out), atol=1e-5, rtol=0)


def test_only_adapters_get_gradients_and_a_is_zero_until_b_moves():
    parts, params, rest, _ = model()
    adapted = lora(params, "int4")

    def loss(p):
        return jnp.mean(parts.merge(p, rest)(TOKENS, POSITIONS)[0] ** 2)

    (value, _), grads = trainable_value_and_grad(lambda p: (loss(p), None))(adapted)
    assert float(value) == float(loss(adapted))
    # Only a and b have gradient leaves: the (int4) base, norms, embedding and head have none.
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    names = sorted(jax.tree_util.keystr(path) for path, _ in flat)
    assert len(names) == 14 and all(n.endswith((".a", ".b")) for n in names)
    step0 = lora_leaves(grads)
    assert all(float(jnp.abs(g.a).max()) == 0.0 for g in step0)  # b = 0 => dL/da = 0
    assert all(float(jnp.abs(g.b).max()) > 0.0 for g in step0)
    # After b moves, a gets a gradient too.
    moved = join_trainable(jax.tree.map(lambda t, g: t - 0.1 * g, split_trainable(adapted)[0], grads),
                           split_trainable(adapted)[1])
    _, grads1 = trainable_value_and_grad(lambda p: (loss(p), None))(moved)
    assert all(float(jnp.abs(g.a).max()) > 0.0 for g in lora_leaves(grads1))


def test_optimizer_state_holds_only_adapter_moments():
    _, params, _, shardings = model()
    adapted, lora_sh = apply_lora_sharded(params, shardings, LoraSpec(4, 8.0, PROJECTIONS, "int4"), seed=0)
    opt = optax.adamw(1e-3)
    mesh = make_mesh(1, 1, 1)
    full = create_train_state(params, opt, mesh, shardings, seed=0)
    state = create_train_state(adapted, opt, mesh, lora_sh, seed=0)

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if x.ndim > 0)

    adapters = trainable_count(adapted)
    d, f = CFG.hidden_size, CFG.intermediate_size
    q, kv = CFG.num_heads * CFG.head_dim, CFG.num_kv_heads * CFG.head_dim
    assert adapters == 4 * ((d + q) * 2 + (d + kv) * 2 + (d + f) * 2 + (f + d))
    assert nbytes(state.opt_state) == 2 * 4 * adapters  # Adam's mu and nu, fp32, of a and b only
    assert nbytes(full.opt_state) == 2 * nbytes(params) > 6 * nbytes(state.opt_state)
    # Placed leaves follow the base's shardings: every new leaf has one.
    assert all(hasattr(x, "sharding") for x in jax.tree.leaves(state.params))
    assert isinstance(state.params["layers"][0]["mixer"]["q_proj"].base, QuantArray)


def _mismatch(rollout, logp):
    batch = token_batch(rollout)
    mask = np.asarray(batch["loss_mask"]) > 0
    return float(np.abs(np.asarray(logp) - np.asarray(batch["old_logprobs"]))[mask].mean())


def test_int4_base_lora_sampler_and_learner_log_probs_agree():
    parts, params, rest, _ = model(8.0)
    adapted = lora(params, "int4", b_value=0.3)
    config = SamplingConfig(6, temperature=1.0, n=2)
    prompts = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]

    def learner(p, rollout, qarl=""):
        batch = token_batch(rollout)
        logp, _ = jax.jit(policy_token_stats, static_argnums=0, static_argnames=("chunk_size", "qarl_format"))(
            parts, p, rest, batch["tokens"], batch["positions"], batch["segment_ids"], chunk_size=16,
            qarl_format=qarl)
        return logp

    # The sampler decodes with the merged dequantized weights; the learner runs the factored
    # int4-base + adapter forward: the same policy.
    rollout = sample_responses(parts, adapted, rest, prompts, key=jax.random.key(0), config=config)
    assert _mismatch(rollout, learner(adapted, rollout)) < 1e-5
    # A quantized rollout of the LoRA policy (rl.rollout_quant) with the QaRL learner agrees as well.
    rollout_q = sample_responses(parts, adapted, rest, prompts, key=jax.random.key(1), config=config,
                                 quant_format="int4")
    assert _mismatch(rollout_q, learner(adapted, rollout_q, "int4")) < 1e-5
    # The naive shape: an int4 sampler of full-precision weights against the full-precision learner.
    naive = sample_responses(parts, params, rest, prompts, key=jax.random.key(0), config=config, quant_format="int4")
    assert _mismatch(naive, learner(params, naive)) > 1e-3


def test_adapters_save_load_round_trip_and_mismatches_fail(tmp_path):
    _, params, _, _ = model()
    trained = lora(params, b_value=0.1)
    spec = LoraSpec(4, 8.0, PROJECTIONS)
    path = save_adapters(trained, str(tmp_path / "lora_adapters.safetensors"), spec)
    arrays, meta = read_adapters(path)
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and sorted(arrays) == sorted(lora_state(trained))
    loaded = load_lora(lora(params, key=7), arrays, source=path)
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match=r"lora_adapters.safetensors: layers.0.mixer.k_proj.a is \(32, 4\).*\(32, 2\)"):
        load_lora(lora(params, rank=2), arrays, source=path)


def test_config_errors_name_the_field():
    _, params, _, _ = model()
    assert lora_spec({"lora": {"rank": 0}}) is None and lora_spec({}) is None
    with pytest.raises(ValueError, match="model.lora.rank must be an integer >= 0"):
        lora_spec({"lora": {"rank": -1}})
    with pytest.raises(ValueError, match="model.lora.base_quant must be one of"):
        lora_spec({"lora": {"rank": 4, "base_quant": "fp4"}})
    with pytest.raises(ValueError, match="model.lora.targets must be a non-empty tuple"):
        lora_spec({"lora": {"rank": 4, "targets": "q_proj"}})
    with pytest.raises(ValueError, match=r"model.lora.targets \['qkv'\] match no weight.*'q_proj'"):
        apply_lora(params, rank=2, alpha=4.0, targets=("q_proj", "qkv"), key=jax.random.key(0))
    with pytest.raises(ValueError, match="lm_head .* which LoRA cannot wrap"):
        apply_lora(params, rank=2, alpha=4.0, targets=("lm_head",), key=jax.random.key(0))
    # Dotted paths select single layers.
    only = apply_lora(params, rank=2, alpha=4.0, targets=(r"layers\.0\.mixer\.v_proj",), key=jax.random.key(0))
    assert len(lora_leaves(only)) == 1 and isinstance(only["layers"][0]["mixer"]["v_proj"], LoraWeight)


def test_forward_matches_qwix_lora_provider_on_the_same_decoder():
    """qwix's own LoRA (interception of the decoder's einsums) with our a / b gives our logits."""
    qwix = pytest.importorskip("qwix")
    _, params, _, _ = model()
    adapted = lora(params, b_value=0.05)
    module = Decoder(CFG, rngs=nnx.Rngs(0))
    wrapped = qwix.apply_lora_to_model(module, qwix.LoraProvider(module_path=".*", rank=4, alpha=8.0),
                                       TOKENS, POSITIONS, rngs=nnx.Rngs(1))
    state = nnx.state(wrapped, nnx.LoRAParam)
    ours = {f"{n}_lora_{ab}": getattr(w, ab) for n, w in
            [(k, v) for k, v in {**adapted["layers"][0]["mixer"], **adapted["layers"][0]["mlp"]}.items()
             if isinstance(v, LoraWeight)] for ab in ("a", "b")}

    def pick(path, x):
        name = str(path[-2].key) if hasattr(path[-2], "key") else str(path[-1])
        # qwix also wraps the lm_head (b = 0 there: no effect); ours do not.
        return ours.get(name, x)

    nnx.update(wrapped, jax.tree_util.tree_map_with_path(pick, state))
    np.testing.assert_allclose(np.asarray(wrapped(TOKENS, POSITIONS)[0]), np.asarray(logits(adapted)), atol=1e-5)


def _assert_frozen_and_trained(before, after):
    """The frozen view (base, norms, embedding, head) is bit-identical; every b moved."""
    for x, y in zip(jax.tree.leaves(split_trainable(before)[1]), jax.tree.leaves(split_trainable(after)[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert all(float(jnp.abs(x.b - y.b).max()) > 0 for x, y in zip(lora_leaves(before), lora_leaves(after)))


def _lora_int4():
    parts, params, rest, shardings = model()
    adapted, lora_sh = apply_lora_sharded(params, shardings, LoraSpec(4, 8.0, PROJECTIONS, "int4"), seed=0)
    return parts, adapted, rest, lora_sh


def test_rl_update_trains_only_adapters_and_micro_batches_give_the_same_step():
    parts, adapted, rest, lora_sh = _lora_int4()
    rng = np.random.default_rng(0)
    b, t, prompt = 8, 8, 3
    lengths = np.array([5, 3, 5, 2, 4, 5, 1, 3])
    slot = np.arange(t)[None]
    valid = slot < prompt + lengths[:, None]
    tokens = np.where(valid, rng.integers(3, 64, size=(b, t)), 0).astype(np.int32)
    positions = np.where(valid, slot, 0).astype(np.int32)
    mask = (valid & (slot >= prompt)).astype(np.float32)
    logp, _ = make_logprob_fn(parts, chunk_size=16)(adapted, rest, tokens, positions, valid.astype(np.int32))
    old = np.asarray(logp) * mask
    batch = RolloutBatch(tokens=tokens, positions=positions, segment_ids=valid.astype(np.int32), loss_mask=mask,
                         old_logprobs=old, rollout_logprobs=old, rewards=rng.integers(0, 2, b).astype(np.float32),
                         group_ids=np.repeat(np.arange(b // 2), 2).astype(np.int32),
                         advantages=rng.normal(size=b).astype(np.float32))
    results = []
    for micro in (1, 2):
        options = RLUpdateOptions(objective="grpo", dgg=False, logprob_chunk=16, micro_batches=micro,
                                  qarl_format="int4")
        optimizer = rl_optimizer(optax.sgd(0.5), options)
        state = create_train_state(jax.tree.map(jnp.copy, adapted), optimizer, make_mesh(1, 1, 1), lora_sh, seed=0)
        new, metrics = make_rl_update(parts, optimizer, options, rest=rest)(state, batch)
        assert float(metrics["grad_norm"]) > 0 and float(metrics["gate/lmhead_energy"]) == 0.0
        _assert_frozen_and_trained(adapted, new.params)
        results.append(new.params)
    for x, y in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-6)


def test_dpo_step_trains_only_adapters():
    from jaxrl_llm.data.tokenizer import CharTokenizer
    from jaxrl_llm.envs.arithmetic import ArithmeticTask
    from jaxrl_llm.train.preference import encode_pairs, make_dpo_step, stack_pairs, task_pairs

    parts, adapted, rest, lora_sh = _lora_int4()
    mesh = make_mesh(1, 1, 1)
    batch = stack_pairs(encode_pairs(task_pairs(ArithmeticTask(1).sample_batch(4, seed=0), seed=0), CharTokenizer(),
                                     seq_len=16))
    optimizer = optax.adam(1e-2)
    state = create_train_state(jax.tree.map(jnp.copy, adapted), optimizer, mesh, lora_sh, seed=0)
    step = make_dpo_step(parts, optimizer, optax.constant_schedule(1e-2), jax.tree.map(lambda x: x.sharding, state),
                         mesh, ref_params=adapted, rest=rest, chunk_size=32)
    new, metrics = step(state, batch)
    assert float(metrics["finite"]) == 1.0
    _assert_frozen_and_trained(adapted, new.params)


def _sft_args(run_dir, *extra):
    return ["sft", "--config", os.path.join(ROOT, "configs", "sft_tiny.py"), f"--config.output_dir={run_dir}",
            "--config.mesh.fsdp=1", "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
            "--config.model.head_dim=16", "--config.model.num_layers=1", "--config.train.steps=30",
            "--config.train.batch_size=16", "--config.train.log_every=1", "--config.train.progress_bar=false",
            "--config.optimizer.warmup_steps=1", "--config.optimizer.learning_rate=2e-2",
            "--config.data.num_train=300", "--config.eval.num_problems=0", "--config.checkpoint.every=0", *extra]


def test_sft_cli_trains_adapters_only_and_exports_merged_weights(tmp_path, capsys):
    from jaxrl_llm.train.builders import build_policy
    from jaxrl_llm.train.checkpoint import Checkpointer

    run_dir = tmp_path / "run"
    hf_dir = tmp_path / "hf"
    args = _sft_args(run_dir, "--config.model.lora.rank=4", "--config.model.lora.base_quant=int4",
                     f"--config.export.hf_dir={hf_dir}")
    assert cli.main(args) == 0
    capsys.readouterr()
    losses = [r["loss"] for r in read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses

    # The starting point: the same config built afresh (same seed: same base, same initial adapters).
    cfg = cli.parse_config_args(args[1:])
    _, parts, initial, rest, _ = build_policy(cfg)
    checkpointer = Checkpointer(str(run_dir / "checkpoints"))
    final = checkpointer.restore_params(initial)
    checkpointer.close()
    for a, b in zip(jax.tree.leaves(split_trainable(initial)[1]), jax.tree.leaves(split_trainable(final)[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # base, norms, embedding: bit-identical
    moved = [float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(split_trainable(initial)[0]),
                                                         jax.tree.leaves(split_trainable(final)[0]))]
    assert min(moved) > 0  # every a and b trained

    # The adapters file holds exactly the trained adapters.
    arrays, meta = read_adapters(str(run_dir / "lora_adapters.safetensors"))
    assert meta["base_quant"] == "int4"
    for x, y in zip(jax.tree.leaves(load_lora(initial, arrays)), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # init_from=orbax of the LoRA run (no LoRA in this config) starts from its merged weights.
    cfg.model.lora.rank = 0
    cfg.model.init_from = f"orbax:{run_dir}"
    _, _, restored, _, _ = build_policy(cfg)
    merged = merge_lora(final)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # The Hugging Face export is the merged model: transformers reproduces its logits.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    tokens = np.array([[1, 40, 41, 12, 50, 52, 30]], np.int32)
    positions = np.arange(7, dtype=np.int32)[None]
    ours = np.asarray(parts.merge(merged, rest)(jnp.asarray(tokens), jnp.asarray(positions))[0])
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs[..., :ours.shape[-1]], ours, atol=1e-4)
