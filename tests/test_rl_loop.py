"""The RL loop: exact resume, config checks, and the rollout stages (quantized rollouts, QaRL alignment)."""

import functools
import json

import jax
import numpy as np
import pytest

from jaxrl_llm.cli import COMMANDS, apply_override, load_config_file
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.rollout.sampler import SamplingConfig
from jaxrl_llm.train.rl import check_rl_config, initial_policy, run_rl
from jaxrl_llm.train.rl_rollout import (build_rollout_batch, decode_responses, encode_prompts, prompts_for_step,
                                        sample_responses, score_responses)
from jaxrl_llm.train.rl_update import make_logprob_fn

TIMING = ("tokens_per_s", "time_s")

SMALL = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.objective_kwargs.entropy_coef": 0.01,
    "rl.steps": 2, "rl.prompts_per_step": 4, "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3,
    "rl.reuse_epochs": 2, "rl.dgg.window": 2, "rl.progress_bar": False, "rl.optimizer.learning_rate": 1e-3,
    "eval.num_problems": 4, "eval.samples_per_prompt": 4, "eval.batch_size": 4, "eval.max_new_tokens": 3,
    "eval.every": 1,
    "checkpoint.every": 1,
}


def small_config(out, **overrides):
    cfg = load_config_file("configs/quickstart.py")
    for key, value in {**SMALL, "output_dir": str(out), **overrides}.items():
        apply_override(cfg, key, str(value))
    return cfg


def comparable(record):
    return {k: v for k, v in record.items() if not k.endswith(TIMING)}


def read(path):
    with open(path) as f:
        return [comparable(json.loads(line)) for line in f]


def test_resume_continues_the_run_exactly(tmp_path):
    full = run_rl(small_config(tmp_path / "full"))
    first = run_rl(small_config(tmp_path / "split"), stop_after=1)
    assert first["steps"] == 1
    second = run_rl(small_config(tmp_path / "split", **{"checkpoint.resume": True}))
    assert second["steps"] == 2 and [r["step"] for r in second["records"]] == [2]
    for a, b in zip(jax.tree.leaves(full["final_state"]), jax.tree.leaves(second["final_state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert read(tmp_path / "full" / "metrics.jsonl") == read(tmp_path / "split" / "metrics.jsonl")
    # The entropy bonus makes every step move the (random-init) policy, rewards or not.
    assert sum(r["reuse/steps_applied"] for r in full["records"]) >= 2
    assert all(r["grad_norm"] > 0 for r in full["records"])
    lines = read(tmp_path / "full" / "metrics.jsonl")
    assert sorted(lines[0]) == ["eval/accuracy", "eval/greedy_accuracy", "eval/maj@4", "eval/mean_length",
                                "eval/pass@4", "eval/truncated", "step"] and lines[0]["step"] == 0
    assert lines[0]["eval/accuracy"] == full["accuracy_before"]
    assert [r["step"] for r in lines if "eval/accuracy" in r] == [0, 1, 2]
    for key in ("reward/mean", "reward/std", "accuracy", "response_length", "pg/kl", "pg/clipfrac", "pg/entropy",
                "gate/events", "gate/z", "reuse/epochs_used", "rollout/tokens_per_s", "update/tokens_per_s"):
        assert key in full["records"][0], key
    assert (tmp_path / "full" / "rl.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_a_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="checkpoint.resume=true"):
        run_rl(small_config(tmp_path))


@pytest.mark.parametrize("key, value, message", [
    ("rl.minibatches", 3, r"rl.minibatches=3 must divide prompts_per_step x samples_per_prompt = 16"),
    ("rl.samples_per_prompt", 1, r"rl.samples_per_prompt must be >= 2 for the group estimator 'grpo'"),
    ("rl.qarl", True, r"rl.qarl needs rl.rollout_quant"),
    ("rl.objective", "nope", r"unknown objective 'nope'"),
])
def test_bad_rl_fields_fail_before_anything_is_built(tmp_path, key, value, message):
    with pytest.raises((ValueError, KeyError), match=message):
        check_rl_config(small_config(tmp_path, **{key: value}))


def test_rl_is_a_cli_command():
    assert "rl" in COMMANDS and "sft" in COMMANDS


@functools.lru_cache(maxsize=None)
def tiny_policy():
    cfg = small_config("/tmp/unused", **{"model.vocab_size": 128})
    return initial_policy(cfg, warm_up=False)


def test_quantized_rollouts_score_and_align_with_a_qarl_learner():
    mesh, parts, params, rest, _ = tiny_policy()
    tok, task = CharTokenizer(), ArithmeticTask(0)
    problems = prompts_for_step(task, 4, seed=0, step=0)
    assert problems == prompts_for_step(task, 4, seed=0, step=0) != prompts_for_step(task, 4, seed=0, step=1)
    config = SamplingConfig(max_new_tokens=3, n=2, stop_ids=(tok.eos_id,), pad_id=tok.pad_id)
    rollout = sample_responses(parts, params, rest, encode_prompts(tok, problems), key=jax.random.key(0),
                               config=config, quant_format="int4")
    texts = decode_responses(tok, rollout)
    rewards = score_responses(task, problems, texts, 2)
    assert rewards.shape == (8,) and set(np.unique(rewards)) <= {0.0, 1.0}
    batch = build_rollout_batch(rollout, rewards, np.repeat(np.arange(4), 2), np.zeros(8, np.float32),
                                pad_id=tok.pad_id)
    mask = batch.loss_mask
    np.testing.assert_array_equal(mask.sum(1), np.asarray(rollout.lengths))
    arrays = (batch.tokens, batch.positions, batch.segment_ids)

    def mismatch(fmt):
        logp, _ = make_logprob_fn(parts, qarl_format=fmt)(params, rest, *arrays)
        return float(np.max(np.abs((np.asarray(logp) - batch.rollout_logprobs) * mask)))

    assert mismatch("int4") < 1e-5  # the learner sees the rollout's int4 weights
    assert mismatch("") > 1e-3  # the full-precision learner does not


def test_learner_log_probs_match_tempered_rollouts():
    mesh, parts, params, rest, _ = tiny_policy()
    tok, task = CharTokenizer(), ArithmeticTask(0)
    problems = prompts_for_step(task, 4, seed=0, step=3)
    config = SamplingConfig(max_new_tokens=3, n=2, temperature=0.7, stop_ids=(tok.eos_id,), pad_id=tok.pad_id)
    rollout = sample_responses(parts, params, rest, encode_prompts(tok, problems), key=jax.random.key(1),
                               config=config)
    batch = build_rollout_batch(rollout, np.zeros(8, np.float32), np.repeat(np.arange(4), 2),
                                np.zeros(8, np.float32), pad_id=tok.pad_id)
    arrays = (batch.tokens, batch.positions, batch.segment_ids)

    def mismatch(temperature):
        logp, _ = make_logprob_fn(parts, temperature=temperature)(params, rest, *arrays)
        return float(np.max(np.abs((np.asarray(logp) - batch.rollout_logprobs) * batch.loss_mask)))

    assert mismatch(0.7) < 1e-5
    assert mismatch(1.0) > 1e-3
