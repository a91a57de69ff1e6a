"""Run logging: JSONL records, TensorBoard events, the loss-curve PNG and the progress bar."""

import glob
import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.train.metrics import MetricsWriter, ProgressBar, format_postfix, plot_loss_curve, read_jsonl


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


class FakeClock:
    """Returns the given times in order, one per call."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_progress_bar_rate_leaves_out_the_first_compiling_interval():
    # Start at t=0; the first step (compile) ends at t=10, then two 1 s steps of 100 tokens each.
    bar = ProgressBar(3, disable=True, time_fn=FakeClock(0.0, 10.0, 11.0, 12.0))
    rates = [bar.update(100, loss=1.0) for _ in range(3)]
    bar.close()
    assert rates[0] == pytest.approx(100 / 10.0)  # the only measurement the first step has
    assert rates[1] == pytest.approx(100 / 1.0)
    assert rates[2] == pytest.approx(200 / 2.0)


def test_progress_bar_keeps_the_positional_call_and_reports_finite_rates():
    bar = ProgressBar(3, initial=1, disable=True)
    rates = [bar.update(100, 1.0) for _ in range(2)]
    bar.close()
    assert all(r > 0 and math.isfinite(r) for r in rates)


def test_progress_bar_shows_the_phase_label_and_named_scalars():
    out = io.StringIO()
    bar = ProgressBar(2, desc="warm-up", file=out, time_fn=FakeClock(0.0, 5.0, 6.0))
    bar.update(10, 2.5)
    bar.set_phase("RL")
    bar.update(50, 1.25, reward=np.float32(0.5), acc=0.75, groups=3)
    bar.close()
    final = out.getvalue().split("\r")[-1]
    assert final.startswith("RL:")
    assert "loss=1.2500, reward=0.5, acc=0.75, groups=3, tok_s=50" in final
    assert "2/2" in final


def test_postfix_orders_loss_then_scalars_then_rate_and_omits_missing_values():
    assert format_postfix(0.5, 1234.6, {"reward": 0.123456}) == {
        "loss": "0.5000", "reward": "0.1235", "tok_s": "1,235"}
    assert format_postfix(None, 10.0, {"acc": 1, "reward": None}) == {"acc": "1", "tok_s": "10"}
