"""Run directories lose nothing: a used directory refuses or resumes a compatible run, a resume's
metrics.jsonl has each step once, and a damaged checkpoint is named by step (or skipped with a flag)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.checkpoint import CheckpointReadError
from jaxrl_llm.train.run_dir import RunDirError, config_differences, flat_config, truncate_metrics
from jaxrl_llm.train.sft_run import run_sft

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1, "data.level": 0, "data.num_train": 64, "train.steps": 6, "train.batch_size": 8,
         "train.log_every": 1, "train.progress_bar": False, "eval.num_problems": 0, "checkpoint.every": 3,
         "checkpoint.max_to_keep": 3}


def sft_config(run_dir, **extra):
    cfg = load_config_file("configs/sft_tiny.py")
    for k, v in {**SMALL, "output_dir": str(run_dir), **extra}.items():
        apply_override(cfg, k, str(v))
    return cfg


def steps_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    summary = run_sft(sft_config(run_dir))
    params = jax.tree.map(np.asarray, _final_params(summary["checkpoint_dir"], run_dir))
    return run_dir, params


def _final_params(ckpt_dir, run_dir):
    from jaxrl_llm.train.sft_run import setup_sft
    from jaxrl_llm.train.checkpoint import Checkpointer

    setup = setup_sft(sft_config(run_dir))
    ckpt = Checkpointer(ckpt_dir)
    try:
        return ckpt.restore(setup.state).params
    finally:
        ckpt.close()


def test_a_second_run_into_a_used_directory_refuses(full_run):
    run_dir, _ = full_run
    with pytest.raises(RunDirError, match=rf"output_dir {run_dir} already holds a run \(checkpoints \(3, 6\); "
                                          r"metrics.jsonl\); set --config.checkpoint.resume=true"):
        run_sft(sft_config(run_dir))
    assert steps_of(run_dir) == [1, 2, 3, 4, 5, 6]  # untouched


def test_resume_with_a_different_run_shaping_field_refuses_naming_it(full_run):
    run_dir, _ = full_run
    with pytest.raises(RunDirError, match=r"optimizer.learning_rate: 0.003 -> 0.001"):
        run_sft(sft_config(run_dir, **{"checkpoint.resume": True, "optimizer.learning_rate": 1e-3}))


def test_crash_after_the_last_checkpoint_resumes_with_each_step_once(full_run, tmp_path):
    src, params = full_run
    run_dir = tmp_path / "crashed"
    shutil.copytree(src, run_dir)
    # A crash after step 6 was logged but before its checkpoint landed: only step 3 is on disk.
    shutil.rmtree(run_dir / "checkpoints" / "6")
    summary = run_sft(sft_config(run_dir, **{"checkpoint.resume": True}))
    assert summary["steps"] == 6
    assert steps_of(run_dir) == [1, 2, 3, 4, 5, 6]
    resumed = jax.tree.map(np.asarray, _final_params(summary["checkpoint_dir"], run_dir))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_checkpoint_is_named_and_the_flag_falls_back(full_run, tmp_path):
    src, params = full_run
    run_dir = tmp_path / "damaged"
    shutil.copytree(src, run_dir)
    os.remove(run_dir / "metrics.jsonl")
    with open(run_dir / "metrics.jsonl", "w") as f:  # steps 1-6 were logged
        f.writelines(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7))
    for root, _, files in os.walk(run_dir / "checkpoints" / "6" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    with pytest.raises(CheckpointReadError, match=r"checkpoint step 6 at .*checkpoints/6 cannot be read .*"
                                                  r"earlier checkpoints: \[3\]; set --config.checkpoint.fallback=true"):
        run_sft(sft_config(run_dir, **{"checkpoint.resume": True}))
    with pytest.warns(UserWarning, match="checkpoint step 6"):
        summary = run_sft(sft_config(run_dir, **{"checkpoint.resume": True, "checkpoint.fallback": True}))
    assert summary["steps"] == 6 and steps_of(run_dir) == [1, 2, 3, 4, 5, 6]


def test_truncate_metrics_keeps_steps_up_to_the_restored_one(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write('{"step": 0, "eval/accuracy": 0.1}\n{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    assert truncate_metrics(str(tmp_path), 2) == 2  # step 3 and the half-written line
    assert steps_of(tmp_path) == [0, 1, 2]


def test_config_differences_ignore_resumable_fields():
    saved = flat_config({"train": {"steps": 10, "batch_size": 8}, "checkpoint": {"every": 5}, "seed": 0})
    now = flat_config({"train": {"steps": 20, "batch_size": 16}, "checkpoint": {"every": 2}, "seed": 0, "x": 1})
    assert config_differences(saved, now) == ["train.batch_size: 8 -> 16", "x: (absent) -> 1"]


def test_the_rl_warm_up_keeps_its_checkpoint_and_a_resume_config_mismatch_is_named(tmp_path):
    from jaxrl_llm.train.rl import run_rl

    cfg = load_config_file("configs/quickstart.py")
    for k, v in {**{k: v for k, v in SMALL.items() if k.startswith(("model.", "mesh.", "data."))},
                 "output_dir": str(tmp_path), "sft.train.steps": 2, "sft.train.batch_size": 8,
                 "sft.train.progress_bar": False, "rl.steps": 1, "rl.prompts_per_step": 2,
                 "rl.samples_per_prompt": 2, "rl.max_new_tokens": 3, "rl.progress_bar": False,
                 "eval.num_problems": 0, "checkpoint.every": 0, "rl.dgg.window": 2}.items():
        apply_override(cfg, k, str(v))
    run_rl(cfg)
    assert sorted(os.listdir(tmp_path / "sft" / "checkpoints")) == ["2"]
    apply_override(cfg, "checkpoint.resume", "true")
    apply_override(cfg, "rl.objective_kwargs.clip_low", "0.1")
    with pytest.raises(RunDirError, match=r"rl.objective_kwargs.clip_low: \(absent\) -> 0.1"):
        run_rl(cfg)
