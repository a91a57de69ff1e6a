"""Task registry and the `DrawnTask` base: a user task in a few lines, reached from a config."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxrl_llm.envs import ArithmeticTask, DrawnTask, TrainerTask, build_task, register_task
from jaxrl_llm.envs.registry import TASKS


class ParityTask(DrawnTask):
    name = "parity_test"

    def __init__(self, width: int = 6, *, eval_fraction: float = 0.2):
        super().__init__(eval_fraction=eval_fraction)
        self.width = width

    def draw(self, rng):
        bits = "".join(rng.choice(list("01"), size=self.width))
        return f"parity {bits}=", str(bits.count("1") % 2), {"ones": bits.count("1")}

    def score(self, problem, response):
        return float(response.strip()[:1] == problem.reference)


@pytest.fixture()
def parity():
    register_task("parity_test", ParityTask, overwrite=True)
    yield
    TASKS.pop("parity_test", None)


def data_cfg(**kw):
    return ConfigDict({"task": "arithmetic", "task_kwargs": ConfigDict(), "level": 1, "eval_fraction": 0.1, **kw})


def test_arithmetic_from_flat_fields_equals_direct_construction():
    task = build_task(data_cfg(level=2))
    direct = ArithmeticTask(2, eval_fraction=0.1)
    assert [p.prompt for p in task.sample_batch(20, seed=3)] == [p.prompt for p in direct.sample_batch(20, seed=3)]
    # task_kwargs wins over the flat field.
    assert build_task(data_cfg(task_kwargs=ConfigDict({"level": 0}))).level_index == 0


def test_arithmetic_problems_unchanged_by_the_base_class():
    # Recorded before `ArithmeticTask` moved onto `DrawnTask`: the same seeds give the same problems.
    task = ArithmeticTask(1)
    batch = task.sample_batch(3, seed=0)
    assert [(p.prompt, p.reference, p.metadata["uid"]) for p in batch] == [
        ("85+63=", "148", 13570510711532544648), ("51+26=", "77", 8833021656932947932),
        ("7+1=", "8", 14587356421414927770)]
    assert [p.prompt for p in task.eval_set(3, 0)] == ["30+80=", "64+23=", "85+20="]
    assert [(p.prompt, p.reference) for p in ArithmeticTask(5).sample_batch(2, 4)] == [
        ("976-970-80=", "-74"), ("283*376-626=", "105782")]
    p = batch[0]
    assert set(p.metadata) == {"split", "level", "operands", "ops", "answer", "uid"}
    assert p.metadata["split"] == "train" and p.reference == str(p.metadata["answer"])


def test_user_task_through_the_registry(parity):
    task = build_task(data_cfg(task="parity_test", task_kwargs=ConfigDict({"width": 8})))
    assert isinstance(task, TrainerTask)
    batch = task.sample_batch(16, seed=0)
    assert all(len(p.prompt) == len("parity ") + 8 + 1 for p in batch)
    assert all(task.score(p, p.reference) == 1.0 for p in batch)
    assert all(int(p.reference) == p.metadata["ones"] % 2 for p in batch)
    held = task.eval_set(10, seed=0)
    train_prompts = {p.prompt for p in task.sample_batch(500, seed=1)}
    assert len({p.prompt for p in held}) == 10 and not train_prompts & {p.prompt for p in held}
    assert all(task.split_of(p.prompt) == "eval" for p in held)
    # Deterministic in the seed.
    assert [p.prompt for p in task.sample_batch(5, seed=7)] == [p.prompt for p in task.sample_batch(5, seed=7)]


def test_registry_errors_name_the_field(parity):
    with pytest.raises(ValueError, match=r"data.task='nope' is not a registered task.*arithmetic"):
        build_task(data_cfg(task="nope"))
    with pytest.raises(ValueError, match=r"data.task_kwargs \['depth'\] are not arguments of task 'parity_test'"):
        build_task(data_cfg(task="parity_test", task_kwargs=ConfigDict({"depth": 3})))
    with pytest.raises(ValueError, match="already registered"):
        register_task("parity_test", lambda: None)
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        build_task(data_cfg(task="parity_test", eval_fraction=1.5))


def test_eval_set_too_small_names_the_task(parity):
    task = ParityTask(width=2)  # 4 prompts in all
    with pytest.raises((ValueError, RuntimeError), match="parity_test: n"):
        task.eval_set(5)
    assert np.isfinite(task.score(task.sample(0), "1"))
