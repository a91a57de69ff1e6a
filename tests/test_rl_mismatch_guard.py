"""The sampler-vs-learner mismatch guard stops a run whose log-probs drift apart, naming the cause."""

import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.rl import MismatchError, run_rl

TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2,
        "rl.samples_per_prompt": 2, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False,
        "eval.num_problems": 0, "checkpoint.every": 0, "rl.dgg.window": 2, "rl.rollout_quant": "int4"}


def config(tmp_path, **extra):
    cfg = load_config_file("configs/quickstart.py")
    for k, v in {**TINY, "output_dir": str(tmp_path), **extra}.items():
        apply_override(cfg, k, str(v))
    return cfg


def test_unaligned_quantized_rollouts_trip_a_tight_guard_naming_the_fix(tmp_path):
    with pytest.raises(MismatchError, match=r"step 1: sampler-vs-learner log-prob mismatch [0-9.e-]+ nats/token "
                                            r"exceeds rl.max_mismatch=1e-09; .*set rl.qarl=true"):
        run_rl(config(tmp_path / "a", **{"rl.max_mismatch": 1e-9}))


def test_the_default_guard_lets_the_aligned_learner_run(tmp_path):
    summary = run_rl(config(tmp_path / "b", **{"rl.qarl": True}))
    assert summary["steps"] == 2
    assert all(r["rollout/mismatch_abs_logp"] < 1e-3 for r in summary["records"])


def test_a_negative_guard_fails_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"rl.max_mismatch must be >= 0 nats/token"):
        run_rl(config(tmp_path / "c", **{"rl.max_mismatch": -1.0}))
