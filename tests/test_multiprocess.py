"""Two real processes (jax.distributed over localhost, CPU collectives) equal one process on the same
global device count: SFT losses, checkpoints and the exported weights, with each process reading its
own rows of one global data order."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

ARGS = ["sft", "--config", "configs/sft_tiny.py", "--config.model.hidden_size=32",
        "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=8",
        "--config.train.steps=4", "--config.train.batch_size=8", "--config.train.log_every=1",
        "--config.train.progress_bar=false", "--config.eval.num_problems=4", "--config.eval.batch_size=4",
        "--config.data.num_train=64", "--config.checkpoint.every=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


RL_ARGS = ["rl", "--config", "configs/quickstart.py", "--config.model.hidden_size=32",
           "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=8",
           "--config.sft.train.steps=2", "--config.sft.train.batch_size=8", "--config.sft.train.progress_bar=false",
           "--config.rl.steps=2", "--config.rl.prompts_per_step=4", "--config.rl.samples_per_prompt=2",
           "--config.rl.progress_bar=false", "--config.eval.num_problems=4", "--config.eval.samples_per_prompt=2",
           "--config.eval.batch_size=4", "--config.checkpoint.every=0", "--config.rl.dgg.window=2"]


def launch(out, num_processes: int, devices_per_process: int, base=None) -> list[str]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
           "JAX_PLATFORMS": "cpu"}
    args = (ARGS + [f"--config.export.hf_dir={out}/hf"] if base is None else base) + [f"--config.output_dir={out}/run"]
    port = free_port()
    procs = []
    for i in range(num_processes):
        extra = [] if num_processes == 1 else [
            f"--config.distributed.coordinator_address=localhost:{port}",
            f"--config.distributed.num_processes={num_processes}", f"--config.distributed.process_id={i}"]
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxrl_llm.cli", *args, *extra], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            log, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a process hung (a collective that not every process entered?)") from None
        logs.append(log)
        assert p.returncode == 0, log[-3000:]
    return logs


def records(out):
    with open(os.path.join(out, "run", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(out):
    return [r["loss"] for r in records(out) if "loss" in r]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, 1, 4)
    logs = launch(two, 2, 2)
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5, atol=1e-6)
    assert len(losses(two)) == 4  # only process 0 writes metrics: each step once
    a, b = load_file(one / "hf" / "model.safetensors"), load_file(two / "hf" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Every process wrote its checkpoint shards and evaluated on the same held-out problems.
    assert sorted(p.name for p in (two / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    accuracies = [line for log in logs for line in log.splitlines() if line.startswith("held-out greedy")]
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_in_rl(tmp_path):
    # Warm-up, rollouts (rows sharded over both processes, gathered for scoring), the proximal pass,
    # updates and sampled evaluation: every logged number equals the one-process run's.
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, 1, 4, RL_ARGS)
    launch(two, 2, 2, RL_ARGS)
    a, b = records(one), records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    timing = ("_s", "per_s")
    for x, y in zip(a, b):
        keys = sorted(k for k, v in x.items() if isinstance(v, (int, float)) and not k.endswith(timing))
        assert keys == sorted(k for k, v in y.items() if isinstance(v, (int, float)) and not k.endswith(timing))
        for k in keys:
            np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-6, err_msg=f"step {x['step']}: {k}")
    assert "loss" in a[1] and "reward/mean" in a[1] and "eval/accuracy" in a[2]


@pytest.mark.parametrize("packing", [False, True])
def test_each_process_reads_its_own_rows_of_one_global_order(packing):
    from jaxrl_llm.data.pipeline import build_sft_dataset
    from jaxrl_llm.data.tokenizer import CharTokenizer

    records = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(40)]
    kw = dict(seq_len=16, seed=3, packing=packing)
    whole = iter(build_sft_dataset(records, CharTokenizer(), batch_size=8, **kw))
    parts = [iter(build_sft_dataset(records, CharTokenizer(), batch_size=4, process_index=p, process_count=2, **kw))
             for p in range(2)]
    for _ in range(6):  # past one epoch (40 records, 8 rows a step)
        expected = next(whole)
        got = [next(it) for it in parts]
        for key in expected:
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), expected[key])
