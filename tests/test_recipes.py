"""Every shipped config loads and passes its checks (a teacher source is pointed at a tiny checkpoint
exported by the SFT command); every RL recipe trains two reduced steps from the CLI, except those whose
learning run in test_recipes_learn.py already goes through the same command."""

import glob
import json
import os

import numpy as np
import pytest
from test_recipes_learn import LEARNING

from jaxrl_llm import cli
from jaxrl_llm.models.hf import load_pretrained
from jaxrl_llm.train.rl import check_rl_config

# Recipes that start from a Hugging Face checkpoint run against tiny local ones in test_hf_end_to_end.py.
CONFIGS = sorted(p for p in glob.glob("configs/*.py")
                 if not cli.load_config_file(p).model.get("init_from", "").startswith("hf:"))
RL_RECIPES = [p for p in CONFIGS if "rl" in cli.load_config_file(p) and not p.endswith("quickstart.py")
              and os.path.basename(p)[:-3] not in LEARNING]
SMALL_MODEL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
               "mesh.fsdp": 1}
TINY_RL = {**SMALL_MODEL, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2,
           "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False,
           "eval.num_problems": 4, "eval.samples_per_prompt": 2, "eval.batch_size": 4, "eval.max_new_tokens": 3,
           "checkpoint.every": 0, "rl.dgg.window": 2}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher trained by the `sft` command and exported with `export.hf_dir`."""
    out = tmp_path_factory.mktemp("teacher")
    hf_dir = out / "hf"
    args = ["sft", "--config", "configs/sft_tiny.py", f"--config.output_dir={out / 'run'}",
            f"--config.export.hf_dir={hf_dir}", "--config.train.steps=3", "--config.train.progress_bar=false",
            "--config.eval.num_problems=0", "--config.data.num_train=64"]
    args += [f"--config.{k}={v}" for k, v in SMALL_MODEL.items()]
    assert cli.main(args) == 0
    return str(hf_dir)


@pytest.fixture(scope="module")
def prm_head_dir(tmp_path_factory):
    """A tiny PRM head trained by the `prm` command (the step judge of configs/bcpg_offline_prm.py)."""
    out = tmp_path_factory.mktemp("prm")
    args = ["prm", "--config", "configs/prm_arith_chain.py", f"--config.output_dir={out}", "--config.train.steps=3",
            "--config.train.batch_size=8", "--config.train.progress_bar=false", "--config.prm.num_train=32",
            "--config.prm.eval.num_problems=4"]
    args += [f"--config.{k}={v}" for k, v in SMALL_MODEL.items()]
    assert cli.main(args) == 0
    return str(out)


def test_the_sft_export_is_a_loadable_hugging_face_checkpoint(teacher_dir):
    assert sorted(os.listdir(teacher_dir)) == ["config.json", "model.safetensors"]
    model, config = load_pretrained(teacher_dir)
    assert config.vocab_size == 128 and config.hidden_size == 32 and config.num_layers == 1
    with open(os.path.join(teacher_dir, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 128


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_loads_and_passes_its_check(path, teacher_dir):
    cfg = cli.load_config_file(path)
    assert cfg.output_dir.startswith("runs/")
    if "rl" in cfg:
        if cfg.rl.teacher.source.startswith("hf:"):
            cli.apply_override(cfg, "rl.teacher.source", f"hf:{teacher_dir}")
        check_rl_config(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("path", RL_RECIPES)
def test_every_rl_recipe_trains_two_reduced_steps_from_the_cli(path, tmp_path, teacher_dir, request):
    overrides = dict(TINY_RL)
    if cli.load_config_file(path).rl.step_labels.get("prm", "") == "prm_head":
        overrides["rl.step_labels.prm_path"] = request.getfixturevalue("prm_head_dir")
    if cli.load_config_file(path).rl.teacher.source.startswith("hf:"):
        overrides["rl.teacher.source"] = f"hf:{teacher_dir}"
        overrides["rl.teacher.topk"] = min(int(cli.load_config_file(path).rl.teacher.topk), 8)
    if cli.load_config_file(path).rl.overlong.cache_length:
        overrides["rl.overlong.cache_length"] = 1
    args = ["rl", "--config", path, f"--config.output_dir={tmp_path}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(args) == 0
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(np.isfinite(r["loss"]) for r in steps)
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2]
