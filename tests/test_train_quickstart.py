"""The SFT quickstart end to end, reduced: the loss falls clearly and the run writes its outputs."""

import json
import os

from jaxrl_llm import cli
from jaxrl_llm.train.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reduced_quickstart_learns_and_writes_metrics_plot_and_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli.main([
        "sft", "--config", os.path.join(ROOT, "configs", "sft_tiny.py"),
        f"--config.output_dir={run_dir}",
        "--config.mesh.fsdp=1",  # one of the 8 test devices
        "--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.head_dim=16",
        "--config.train.steps=120", "--config.train.batch_size=32", "--config.train.log_every=5",
        "--config.train.progress_bar=false", "--config.optimizer.warmup_steps=20",
        "--config.optimizer.learning_rate=5e-3", "--config.data.num_train=2000",
        "--config.eval.num_problems=40", "--config.eval.batch_size=40", "--config.checkpoint.every=60",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out greedy exact-match accuracy:" in out

    records = [r for r in read_jsonl(str(run_dir / "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in records][:2] == [5, 10] and records[-1]["step"] == 120
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.5 * first, (first, last)
    assert all(r["finite"] == 1.0 and r["tokens_per_s"] > 0 for r in records)
    evals = [r for r in read_jsonl(str(run_dir / "metrics.jsonl")) if "eval_accuracy" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval_accuracy"] <= 1.0

    with open(run_dir / "loss.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"
    steps = sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit())
    assert steps == [60, 120]
    assert os.listdir(run_dir / "tensorboard")
    summary = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert summary["steps"] == 120 and summary["final_loss"] < summary["first_loss"]
