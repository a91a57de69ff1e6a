"""Run logging: JSONL records, TensorBoard events, the loss-curve PNG and the progress bar."""

import glob
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.train.metrics import MetricsWriter, ProgressBar, plot_loss_curve, read_jsonl


def test_jsonl_holds_one_record_per_write_with_python_scalars(tmp_path):
    with MetricsWriter(str(tmp_path)) as w:
        w.write(1, {"loss": jnp.asarray(2.5), "tokens": np.int32(7)})
        w.write(2, {"loss": 1.25, "grad_norm": float("nan")})
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert records[0] == {"step": 1, "loss": 2.5, "tokens": 7}
    assert records[1]["step"] == 2 and records[1]["loss"] == 1.25 and records[1]["grad_norm"] == "nan"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # strict JSON, no NaN literal
    events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0


def test_non_scalar_metrics_are_rejected(tmp_path):
    with MetricsWriter(str(tmp_path), tensorboard=False) as w:
        with pytest.raises(ValueError, match=r"metrics must be scalars; got shape \(2,\)"):
            w.write(1, {"loss": np.ones(2)})


def test_loss_curve_png_is_written_from_the_jsonl(tmp_path):
    with MetricsWriter(str(tmp_path), tensorboard=False) as w:
        for step in range(1, 21):
            w.write(step, {"loss": 3.0 / step})
    png = plot_loss_curve(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no numeric 'accuracy' values"):
        plot_loss_curve(str(tmp_path / "metrics.jsonl"), str(tmp_path / "acc.png"), key="accuracy")


def test_progress_bar_reports_a_positive_token_rate():
    bar = ProgressBar(3, disable=True)
    rates = [bar.update(100, loss=1.0) for _ in range(3)]
    bar.close()
    assert all(r > 0 and math.isfinite(r) for r in rates)
