"""Run logging at the edge of training: JSONL + TensorBoard, a progress bar, a loss-curve plot.

`MetricsWriter.write(step, metrics)` appends one JSON object per call to `metrics.jsonl` and the
same scalars to TensorBoard; `plot_loss_curve` redraws a PNG from the JSONL alone, so a plot can be
made for any run after the fact.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _scalar(value: Any) -> float | int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metrics must be scalars; got shape {arr.shape}")
    item = arr.reshape(()).item()
    return item if isinstance(item, (int, float)) else float(item)


class MetricsWriter:
    """Writes `{"step": s, **scalars}` lines to `<run_dir>/metrics.jsonl` and TensorBoard events."""

    def __init__(self, run_dir: str, *, tensorboard: bool = True):
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl_path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.jsonl_path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Log scalar `metrics` at `step`; returns the record written."""
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: _scalar(v) for k, v in metrics.items()})
        # json has no NaN/inf literals; strings keep the line parseable and the event visible.
        line = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step":
                    self._tb.add_scalar(key, value, int(step))
        return record

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(jsonl_path: str, png_path: str, *, key: str = "loss") -> str:
    """Plot `key` against `step` from a metrics JSONL into `png_path` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_jsonl(jsonl_path) if isinstance(r.get(key), (int, float))]
    if not records:
        raise ValueError(f"{jsonl_path} has no numeric {key!r} values to plot")
    steps = [r["step"] for r in records]
    values = [r[key] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def format_postfix(loss: float | None, tokens_per_s: float, scalars: Mapping[str, Any]) -> dict[str, str]:
    """The bar's right-hand fields in order: loss, the named `scalars`, tok_s; None values are left out
    (so `acc=record.get("eval/accuracy")` shows only on the steps that evaluate)."""
    fields = {} if loss is None else {"loss": f"{float(loss):.4f}"}
    for name, value in scalars.items():
        if value is None:
            continue
        value = _scalar(value)
        fields[name] = f"{value:.4g}" if isinstance(value, float) else str(value)
    fields["tok_s"] = f"{tokens_per_s:,.0f}"
    return fields


class ProgressBar:
    """A tqdm bar: phase label, step, loss and other scalars, tokens/s and ETA; `update` once per step.

    `ProgressBar(total_steps, initial=step, disable=..., desc="RL")`, then per step
    `bar.update(n_tokens, loss, reward=..., acc=...)` and finally `bar.close()`.

    Tokens/s leaves out compilation: the first update's interval (bar start to first update, which
    holds the jit compile of the step) is not counted, and from the second update on the rate is
    tokens since the first update / time since the first update. The first update has no other
    measurement, so it returns (and shows) the rate of that one interval.
    """

    def __init__(self, total_steps: int, *, initial: int = 0, disable: bool = False, desc: str | None = None,
                 time_fn: Callable[[], float] = time.perf_counter, file: Any = None):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=initial, disable=disable, desc=desc, file=file,
                         dynamic_ncols=True)
        self._time = time_fn
        self._t0 = time_fn()
        self._t_first: float | None = None
        self._tokens = 0

    def set_phase(self, desc: str) -> None:
        """Change the label at the left, e.g. to "eval" while a step evaluates."""
        self._bar.set_description_str(desc)

    def update(self, n_tokens: int, loss: float | None = None, **scalars: Any) -> float:
        """Advance one step of `n_tokens` tokens; shows `loss` and `scalars`; returns tokens/s."""
        now = self._time()
        if self._t_first is None:
            self._t_first = now
            rate = int(n_tokens) / max(now - self._t0, 1e-9)
        else:
            self._tokens += int(n_tokens)
            rate = self._tokens / max(now - self._t_first, 1e-9)
        self._bar.set_postfix(format_postfix(loss, rate, scalars), refresh=False)
        self._bar.update(1)
        return rate

    def close(self) -> None:
        self._bar.close()
