"""Every arithmetic RL recipe learns: from one shared 100-step SFT warm-up on arithmetic level 0, a
reduced run of the recipe as shipped (6 steps x 32 prompts x 8 samples; OPD / AOPD, whose one update
per batch moves less, 8 x 64) raises train-rollout accuracy, the mean of the last two steps over the
first two.

Measured (2026-12-03, CPU), accuracy gain seed 0 / seed 1: GRPO-family recipes +0.15..+0.23 / +0.11..+0.12
(gspo, skillc, dapo at seed 1); opd +0.12 / +0.08, aopd +0.12 / +0.10 (benchmarks/RESULTS.md, "Every
arithmetic recipe learns from one cheap warm-up"). The bar, +0.05, is about twice the noise of the
difference of two 2-step means at this batch size.
"""

import fcntl
import json
import shutil

import pytest

from jaxrl_llm import cli

LEARNING = ["aopd", "bcpg_nsa", "dapo", "dgg", "drgrpo", "gspo", "opd", "ppo", "rdpo", "rloo", "sdar", "skillc",
            "tbpo"]
WARM_UP_STEPS = 100
TEACHER_STEPS = 300
COMMON = {"mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.progress_bar": False, "checkpoint.every": 0,
          "eval.num_problems": 8, "eval.batch_size": 8}
SIZE = {"opd": (8, 64), "aopd": (8, 64)}  # (rl.steps, rl.prompts_per_step); the rest (6, 32)
MIN_GAIN = 0.05


def shared_sft_run(tmp_path_factory, worker_id: str, name: str, steps: int, export: bool = False) -> str:
    """One `sft` run per test session, shared by the xdist workers (file-locked; a finished run
    leaves `done`, so a crashed one is redone from scratch)."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the session's directory, above each worker's own
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            args = ["sft", "--config", "configs/sft_tiny.py", f"--config.output_dir={out / 'run'}",
                    "--config.mesh.fsdp=1", "--config.data.level=0", f"--config.train.steps={steps}",
                    "--config.eval.num_problems=0", "--config.train.progress_bar=false",
                    *([f"--config.export.hf_dir={out / 'hf'}"] if export else [])]
            assert cli.main(args) == 0
            (out / "done").write_text("")
    return str(out)


@pytest.fixture(scope="module")
def warm_up(tmp_path_factory, worker_id):
    return shared_sft_run(tmp_path_factory, worker_id, "level0_warm_up", WARM_UP_STEPS) + "/run"


def teacher(tmp_path_factory, worker_id) -> str:
    """The OPD / AOPD teacher: the same SFT trained 300 steps, exported as a Hugging Face folder."""
    return shared_sft_run(tmp_path_factory, worker_id, "level0_teacher", TEACHER_STEPS, export=True) + "/hf"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", LEARNING)
def test_every_arithmetic_recipe_learns_from_a_short_warm_up(recipe, warm_up, tmp_path, tmp_path_factory, worker_id):
    steps, prompts = SIZE.get(recipe, (6, 32))
    overrides = {**COMMON, "model.init_from": f"orbax:{warm_up}", "rl.steps": steps, "rl.prompts_per_step": prompts,
                 "eval.every": steps}
    if cli.load_config_file(f"configs/{recipe}.py").rl.teacher.source.startswith("hf:"):
        overrides["rl.teacher.source"] = f"hf:{teacher(tmp_path_factory, worker_id)}"
    args = ["rl", "--config", f"configs/{recipe}.py", f"--config.output_dir={tmp_path}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(args) == 0
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    accuracy = [r["accuracy"] for r in records if "loss" in r]
    print(recipe, "train accuracy per step", [round(a, 3) for a in accuracy])
    assert len(accuracy) == steps
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, steps]
    gain = (accuracy[-1] + accuracy[-2] - accuracy[0] - accuracy[1]) / 2
    assert gain > MIN_GAIN, f"{recipe}: accuracy {accuracy[:2]} -> {accuracy[-2:]} (gain {gain:.3f})"
