"""The one loop driver of every trainer (SFT, warm-up, DPO, RL): steps, the non-finite stop,
progress bar, metrics and checkpoints.

A trainer supplies `step(state) -> (state, record, n_tokens)` (host floats in `record`) and,
optionally, `after_step(state, record)` for work between steps (held-out evaluation); `drive`
does the rest the same way for all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.metrics import MetricsWriter, ProgressBar


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; `step` is the 1-based step that did."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"non-finite loss or gradient (loss {loss}) at step {step}; stopping "
                         "(the step's update was skipped on device and no checkpoint is written for it)")
        self.step = step
        self.loss = loss


def is_finite_record(record: dict[str, float]) -> bool:
    """The step's loss is finite and no optimizer step was skipped for a non-finite value."""
    return (math.isfinite(float(record["loss"])) and float(record.get("finite", 1.0)) == 1.0
            and not float(record.get("nonfinite_steps", 0.0)))


def drive(state: Any, step: Callable[[Any], tuple[Any, dict[str, float], int]], num_steps: int, *,
          phase: str, progress: bool = False, total: int | None = None,
          writer: MetricsWriter | None = None, log_every: int = 1,
          checkpointer: Checkpointer | None = None, checkpoint_at: Callable[[int], bool] = lambda s: False,
          checkpoint_iterator: Any = None, after_step: Callable[[Any, dict], None] | None = None,
          bar_fields: Callable[[dict], dict] | None = None) -> tuple[Any, list[dict[str, float]]]:
    """Run `num_steps` steps from `state`; returns the final state and one record per step.

    phase: the progress bar's label ("SFT", "warm-up", "DPO", "RL"); total: the run's last step
    (default: this call's). Records carry `step`, `tokens_per_s` (after the first, compiling
    step; `ProgressBar`) and `step_time_s`. A record is written when `step % log_every == 0`, at
    this call's last step, or when `after_step` added `eval/` keys. `checkpoint_at(step)` picks
    the steps to checkpoint (with `checkpoint_iterator`, a grain iterator, saved alongside).
    Raises `NonFiniteLossError` as soon as a step's loss or gradient is not finite (the record is
    written first, so the bad values are on disk).
    """
    start = int(state.step)
    final = start + num_steps
    bar = ProgressBar(total if total is not None else final, initial=start, disable=not progress, desc=phase)
    records: list[dict[str, float]] = []
    t_last = time.perf_counter()
    try:
        for _ in range(num_steps):
            state, record, n_tokens = step(state)
            at = int(state.step)
            if not is_finite_record(record):
                if writer is not None:
                    writer.write(at, record)
                raise NonFiniteLossError(at, float(record["loss"]))
            if after_step is not None:
                bar.set_phase(f"{phase} eval")
                after_step(state, record)
                bar.set_phase(phase)
            now = time.perf_counter()
            record["tokens_per_s"] = bar.update(n_tokens, record["loss"], **(bar_fields(record) if bar_fields else {}))
            record["step_time_s"] = now - t_last
            t_last = now
            records.append({"step": at, **record})
            evaluated = any(k.startswith("eval/") for k in record)
            if writer is not None and (at % log_every == 0 or at == final or evaluated):
                writer.write(at, record)
            if checkpointer is not None and checkpoint_at(at):
                checkpointer.save(at, state, checkpoint_iterator)
    finally:
        bar.close()
    return state, records
