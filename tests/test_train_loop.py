"""The one loop driver: cadence of logs and checkpoints, eval hooks and the non-finite stop (no JAX)."""

import math
from types import SimpleNamespace

import pytest

from jaxrl_llm.train.loop import NonFiniteLossError, drive, is_finite_record


class Writer:
    def __init__(self):
        self.lines = []

    def write(self, step, record):
        self.lines.append((step, dict(record)))


class Saver:
    def __init__(self):
        self.steps = []

    def save(self, step, state, iterator=None):
        self.steps.append(step)


def counting_step(losses):
    """A step that advances `state.step` and reports the next loss (and 4 tokens)."""
    def step(state):
        new = SimpleNamespace(step=state.step + 1)
        return new, {"loss": losses[state.step], "grad_norm": 1.0}, 4

    return step


def test_logs_every_k_steps_the_last_step_and_evaluations_and_checkpoints_where_asked():
    writer, saver = Writer(), Saver()

    def after_step(state, record):
        if state.step == 2:
            record["eval/accuracy"] = 0.5

    state, records = drive(SimpleNamespace(step=0), counting_step([1.0, 0.9, 0.8, 0.7, 0.6]), 5, phase="RL",
                           writer=writer, log_every=3, checkpointer=saver, checkpoint_at=lambda s: s % 2 == 0,
                           after_step=after_step)
    assert state.step == 5 and [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [s for s, _ in writer.lines] == [2, 3, 5]  # eval at 2, every 3rd, the last
    assert writer.lines[0][1]["eval/accuracy"] == 0.5
    assert saver.steps == [2, 4]
    assert all(r["tokens_per_s"] > 0 and r["step_time_s"] >= 0 for r in records)


@pytest.mark.parametrize("bad", [{"loss": math.nan}, {"loss": 1.0, "finite": 0.0}, {"loss": 1.0, "nonfinite_steps": 2.0}])
def test_a_non_finite_step_stops_the_run_naming_the_step_and_is_written_first(bad):
    writer, saver = Writer(), Saver()

    def step(state):
        new = SimpleNamespace(step=state.step + 1)
        return new, ({"loss": 1.0} if new.step < 3 else dict(bad)), 1

    assert not is_finite_record(bad)
    with pytest.raises(NonFiniteLossError, match="at step 3") as info:
        drive(SimpleNamespace(step=0), step, 5, phase="SFT", writer=writer, checkpointer=saver,
              checkpoint_at=lambda s: True)
    assert info.value.step == 3 and isinstance(info.value, FloatingPointError)
    assert writer.lines[-1][0] == 3 and saver.steps == [1, 2]  # no checkpoint for the bad step
