"""kill -9 in a step and in a checkpoint write, then rerun with checkpoint.resume: the final weights
equal an uninterrupted run's and metrics.jsonl has each step once."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

ARGS = ["sft", "--config", "configs/sft_tiny.py", "--config.model.hidden_size=32",
        "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=8",
        "--config.mesh.fsdp=1", "--config.train.steps=12", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.train.progress_bar=false", "--config.eval.num_problems=0",
        "--config.data.num_train=64", "--config.checkpoint.every=3", "--config.checkpoint.max_to_keep=5"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def command(out, *extra):
    return [sys.executable, "-m", "jaxrl_llm.cli", *ARGS, f"--config.output_dir={out}/run",
            f"--config.export.hf_dir={out}/hf", *extra]


def run(out, *extra):
    done = subprocess.run(command(out, *extra), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def logged_steps(out):
    path = os.path.join(out, "run", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    steps = []
    with open(path) as f:
        for line in f:
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass  # a line cut by the kill
    return steps


def kill_when(out, ready):
    proc = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def in_checkpoint_write(out):
    ckpt = os.path.join(out, "run", "checkpoints")
    return os.path.isdir(ckpt) and any("tmp" in name for name in os.listdir(ckpt))


@pytest.mark.slow
def test_kill_9_in_a_step_and_in_a_checkpoint_write_then_resume(tmp_path):
    full = tmp_path / "full"
    run(full)
    reference = load_file(full / "hf" / "model.safetensors")
    cases = {"in a step": lambda out: max(logged_steps(out), default=0) >= 5,
             "in a checkpoint write": lambda out: max(logged_steps(out), default=0) >= 5 and in_checkpoint_write(out)}
    for name, ready in cases.items():
        out = tmp_path / name.replace(" ", "_")
        kill_when(out, lambda: ready(out))
        assert not (out / "hf").exists(), f"{name}: the run finished before it was killed"
        run(out, "--config.checkpoint.resume=true")
        assert logged_steps(out) == list(range(1, 13)), name
        resumed = load_file(out / "hf" / "model.safetensors")
        for key, value in reference.items():
            np.testing.assert_array_equal(resumed[key], value, err_msg=f"{name}: {key}")
