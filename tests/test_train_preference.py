"""The preference (DPO) trainer: pair data, the jitted step, and a short run end to end."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.train import preference
from jaxrl_llm.train.builders import build_optimizer, build_policy, build_schedule
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.metrics import read_jsonl
from jaxrl_llm.train.preference import (check_dpo_config, corrupt_answer, encode_pairs, load_pairs, make_dpo_step,
                                        pair_sequence_logps, read_pairs, run_dpo, stack_pairs, task_pairs)
from jaxrl_llm.train.state import create_train_state

SMALL = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "data.seq_len": 16, "data.num_pairs": 256, "sft.train.steps": 0,
    "dpo.steps": 30, "dpo.batch_size": 32, "dpo.log_every": 5, "dpo.progress_bar": False,
    "dpo.optimizer.learning_rate": 3e-3, "dpo.optimizer.warmup_steps": 0,
    "eval.num_pairs": 64, "eval.num_problems": 16, "eval.batch_size": 16, "eval.max_new_tokens": 4,
}


def small_config(out="unused", **overrides):
    cfg = load_config_file("configs/dpo_tiny.py")
    for key, value in {**SMALL, "output_dir": str(out), **overrides}.items():
        apply_override(cfg, key, str(value))
    return cfg


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ------------------------------------------------------------------------------------------ (a) data

def test_pairs_reader_errors_name_file_line_and_key(tmp_path):
    good = json.dumps({"prompt": "1+2=", "chosen": "3", "rejected": "4"})
    path = write_lines(tmp_path / "pairs.jsonl", [good, "", json.dumps({"prompt": "2+2=", "chosen": "4"})])
    with pytest.raises(ValueError, match=rf"^{path}:3: missing key 'rejected'"):
        read_pairs(path)
    path = write_lines(tmp_path / "typed.jsonl", [good, json.dumps({"prompt": "2+2=", "chosen": 4, "rejected": "5"})])
    with pytest.raises(ValueError, match=rf"^{path}:2: key 'chosen' must be a string; got int"):
        read_pairs(path)
    path = write_lines(tmp_path / "broken.jsonl", [good, '{"prompt": "2+'])
    with pytest.raises(ValueError, match=rf"^{path}:2: not valid JSON"):
        read_pairs(path)
    path = write_lines(tmp_path / "ok.jsonl", [good, "", good])
    assert read_pairs(path) == [json.loads(good)] * 2


def test_a_bad_pairs_file_fails_before_the_model_is_built(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"prompt": "1+2=", "rejected": "4"})])

    def no_build(*args, **kwargs):
        raise AssertionError("the policy was built before the pairs were checked")

    monkeypatch.setattr(preference, "preference_policy", no_build)
    with pytest.raises(ValueError, match=rf"{path}:1: missing key 'chosen'"):
        run_dpo(small_config(tmp_path / "run", **{"data.pairs_path": path}))


def test_pairs_file_holds_out_its_last_records_for_evaluation(tmp_path):
    records = [{"prompt": f"{i}+0=", "chosen": str(i), "rejected": str(i + 1)} for i in range(10)]
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(r) for r in records])
    train, held_out = load_pairs(small_config(**{"data.pairs_path": path, "eval.num_pairs": 3}), None)
    assert train == records[:7] and held_out == records[7:]
    with pytest.raises(ValueError, match="eval.num_pairs=10 leaves no training pairs"):
        load_pairs(small_config(**{"data.pairs_path": path, "eval.num_pairs": 10}), None)


def test_corrupted_answers_differ_in_one_digit_and_score_wrong():
    task = ArithmeticTask(3)  # 3-digit +/-: negative answers too
    problems = task.sample_batch(200, seed=0)
    pairs = task_pairs(problems, seed=0)
    assert pairs == task_pairs(problems, seed=0)  # deterministic
    for problem, pair in zip(problems, pairs):
        chosen, rejected = pair["chosen"], pair["rejected"]
        assert chosen == problem.reference and len(rejected) == len(chosen)
        assert sum(a != b for a, b in zip(chosen, rejected)) == 1
        assert task.score(problem, rejected) == 0.0 and task.score(problem, chosen) == 1.0
        digits = rejected.lstrip("-")
        assert len(digits) == 1 or digits[0] != "0"
    assert corrupt_answer("7", np.random.default_rng(0)) in set("012345689")


def test_pair_encoding_masks_the_response_and_eos_only():
    tok = CharTokenizer()
    enc = encode_pairs([{"prompt": "1+2=", "chosen": "3", "rejected": "45"}], tok, seq_len=9)
    assert enc["tokens"].shape == (1, 2, 9)
    prompt = [tok.bos_id] + tok.encode("1+2=")
    np.testing.assert_array_equal(enc["tokens"][0, 0], prompt + tok.encode("3") + [tok.eos_id] + [tok.pad_id] * 2)
    np.testing.assert_array_equal(enc["tokens"][0, 1], prompt + tok.encode("45") + [tok.eos_id] + [tok.pad_id])
    np.testing.assert_array_equal(enc["loss_mask"][0], [[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(enc["segment_ids"][0], [[1] * 7 + [0] * 2, [1] * 8 + [0]])
    np.testing.assert_array_equal(enc["positions"][0], [[0, 1, 2, 3, 4, 5, 6, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 0]])
    rows = stack_pairs({k: np.concatenate([v, v + 100]) for k, v in enc.items()})  # two pairs
    np.testing.assert_array_equal(rows["tokens"][:, 0], [1, 101, 1, 101])  # chosen, chosen, rejected, rejected
    np.testing.assert_array_equal(rows["tokens"][2], enc["tokens"][0, 1])
    with pytest.raises(ValueError, match=r"pair 0 \(rejected\): record of 8 tokens exceeds data.seq_len=7"):
        encode_pairs([{"prompt": "1+2=", "chosen": "3", "rejected": "45"}], tok, seq_len=7)


def test_config_check_names_the_field():
    with pytest.raises(ValueError, match=r"dpo.objective='grpo' is trained by the 'rl' command.*\['dpo'"):
        check_dpo_config(small_config(**{"dpo.objective": "grpo"}))
    cfg = small_config()
    cfg.dpo.objective_kwargs.tau = 1.0
    with pytest.raises(ValueError, match=r"dpo.objective_kwargs.tau is not a hyperparameter of objective 'dpo'"):
        check_dpo_config(cfg)
    with pytest.raises(ValueError, match=r"dpo.micro_batches=3 must divide dpo.batch_size=32"):
        check_dpo_config(small_config(**{"dpo.micro_batches": 3}))


# ------------------------------------------------------------------------------------------ (b) step

@functools.lru_cache(maxsize=None)
def tiny_policy(**mesh):
    cfg = small_config(**{f"mesh.{k}": v for k, v in mesh.items()})
    tok = CharTokenizer()
    pairs = task_pairs(ArithmeticTask(1).sample_batch(8, seed=0), seed=0)
    batch = stack_pairs(encode_pairs(pairs, tok, seq_len=16))
    return cfg, build_policy(cfg, tok), batch


def dpo_step_for(cfg, policy, **kwargs):
    mesh, parts, params, rest, shardings = policy
    optimizer, schedule = build_optimizer(cfg.dpo.optimizer, 10), build_schedule(cfg.dpo.optimizer, 10)
    state = create_train_state(jax.tree.map(jnp.copy, params), optimizer, mesh, shardings, seed=0)
    step = make_dpo_step(parts, optimizer, schedule, jax.tree.map(lambda x: x.sharding, state), mesh,
                         ref_params=params, rest=rest, **kwargs)
    return state, step


def test_sequence_logp_sums_the_response_and_eos_token_logprobs():
    _, (_, parts, params, rest, _), batch = tiny_policy()
    chosen, rejected = pair_sequence_logps(parts, params, rest, batch)
    logits, _ = parts.merge(params, rest)(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"])
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    expected = []
    for i, (row, mask) in enumerate(zip(batch["tokens"], batch["loss_mask"])):
        ts = np.nonzero(mask)[0]  # response tokens and eos, each predicted from the position before
        expected.append(sum(logp[i, t - 1, row[t]] for t in ts))
    np.testing.assert_allclose(np.concatenate([chosen, rejected]), expected, rtol=1e-5)


def test_first_step_loss_is_log2_and_the_update_is_applied():
    cfg, policy, batch = tiny_policy()
    state, step = dpo_step_for(cfg, policy)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(math.log(2.0), abs=1e-6)  # policy == reference
    assert float(metrics["margin"]) == 0.0 and float(metrics["obj/dpo/reward_accuracy"]) == 0.0
    assert float(metrics["finite"]) == 1.0 and float(metrics["pairs"]) == 8.0 and float(metrics["grad_norm"]) > 0
    assert int(state.step) == 1
    after = jax.tree.leaves(state.params)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), after))
    _, metrics = step(state, batch)
    assert float(metrics["loss"]) < math.log(2.0) and float(metrics["margin"]) > 0  # same batch: it learned it


def test_micro_batches_give_the_full_batch_loss_and_gradient_on_a_sharded_mesh():
    cfg, policy, batch = tiny_policy(data=2)
    out = {}
    for m in (1, 4):
        state, step = dpo_step_for(cfg, policy, num_micro_batches=m)
        _, out[m] = step(state, batch)
    assert float(out[4]["loss"]) == pytest.approx(float(out[1]["loss"]), abs=1e-6)
    assert float(out[4]["grad_norm"]) == pytest.approx(float(out[1]["grad_norm"]), rel=1e-5)


def test_a_non_finite_loss_leaves_params_and_optimizer_state_unchanged():
    cfg, policy, batch = tiny_policy()
    state, step = dpo_step_for(cfg, policy, objective_kwargs={"beta": float("nan")})
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, metrics = step(state, batch)
    assert float(metrics["finite"]) == 0.0 and math.isnan(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, np.asarray(b))


# ------------------------------------------------------------------------------------------ (c, d) run

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    # A few SFT warm-up steps (still at the start of their learning-rate warmup) exercise the warm-up path.
    warm_up = {"sft.train.steps": 4, "sft.train.batch_size": 16, "sft.train.log_every": 2, "data.num_train": 256}
    return run_dir, run_dpo(small_config(run_dir, **warm_up))


def test_a_short_run_lowers_the_loss_and_raises_the_held_out_margin(short_run):
    run_dir, summary = short_run
    records = [r for r in read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r]
    losses = [r["loss"] for r in records]
    assert summary["first_loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    assert np.mean(losses[-3:]) < math.log(2.0) - 0.03, losses
    assert np.mean([r["obj/dpo/reward_accuracy"] for r in records[-3:]]) > 0.55
    assert summary["pref_accuracy_before"] == 0.0 and summary["margin_before"] == 0.0  # pi == pi_ref
    assert summary["pref_accuracy_after"] > 0.5 and summary["margin_after"] > 0.3, summary
    assert 0.0 <= summary["greedy_accuracy_after"] <= 1.0 and summary["eval_num_pairs"] == 64


def test_a_run_writes_metrics_and_a_final_checkpoint(short_run):
    run_dir, summary = short_run
    lines = read_jsonl(str(run_dir / "metrics.jsonl"))
    evals = [r for r in lines if "eval/pref_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 30]
    assert sorted(evals[0]) == ["eval/greedy_accuracy", "eval/margin", "eval/policy_accuracy", "eval/pref_accuracy",
                                "step"]
    train = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    for key in ("loss", "grad_norm", "learning_rate", "finite", "margin", "obj/dpo/chosen_reward",
                "obj/dpo/rejected_reward", "obj/dpo/reward_accuracy"):
        assert key in train[0], key
    assert all(r["finite"] == 1.0 and r["learning_rate"] == pytest.approx(3e-3) for r in train)
    assert summary["steps"] == 30 and summary["final_loss"] == train[-1]["loss"]
    assert summary["run_dir"] == str(run_dir) and summary["wall_time_s"] > 0
    assert [r["step"] for r in read_jsonl(str(run_dir / "sft" / "metrics.jsonl"))] == [2, 4]  # the warm-up
    checkpointer = Checkpointer(summary["checkpoint_dir"])
    assert checkpointer.all_steps() == [30]
    checkpointer.close()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        run_dpo(small_config(run_dir))
