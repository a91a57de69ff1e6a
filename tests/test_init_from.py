"""`model.init_from` (orbax run / Hugging Face folder) for sft and rl, the `export` command, and the
teacher from an orbax run: every hand-off keeps the weights bit for bit."""

import json
import os

import jax
import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.models.hf import load_pretrained
from jaxrl_llm.train.builders import build_policy
from jaxrl_llm.train.init_from import orbax_location, parse_init_from

SMALL = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=1",
         "--config.model.head_dim=8", "--config.mesh.fsdp=1"]
QUIET = ["--config.train.progress_bar=false", "--config.eval.num_problems=0", "--config.data.num_train=64",
         "--config.checkpoint.every=0", "--config.optimizer.warmup_steps=0"]


def _sft(out, *extra):
    args = ["sft", "--config", "configs/sft_tiny.py", f"--config.output_dir={out}", "--config.train.steps=3",
            *SMALL, *QUIET, *extra]
    assert cli.main(args) == 0


def _cfg(*overrides):
    return cli.load_with_overrides("configs/sft_tiny.py", [o[len("--config."):].split("=", 1) for o in overrides])


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "sft"
    _sft(out)
    return str(out)


def test_parse_init_from_accepts_the_three_forms_and_names_the_field():
    assert parse_init_from("") == ("", "")
    assert parse_init_from("hf:/a/b") == ("hf", "/a/b")
    assert parse_init_from("orbax:runs/x") == ("orbax", "runs/x")
    for bad in ("runs/x", "gs:bucket", "hf:"):
        with pytest.raises(ValueError, match="model.init_from must be"):
            parse_init_from(bad)


def test_orbax_location_finds_the_newest_step_from_run_dir_checkpoints_or_step(sft_run):
    ckpts = os.path.join(sft_run, "checkpoints")
    for path in (sft_run, ckpts, os.path.join(ckpts, "3")):
        directory, step, run_config = orbax_location(path)
        assert (directory, step, run_config) == (ckpts, 3, os.path.join(sft_run, "config.json"))
    with pytest.raises(FileNotFoundError, match="checkpoints/7: no such directory"):
        orbax_location(os.path.join(ckpts, "7"))


def test_orbax_init_restores_the_saved_parameters_and_architecture(sft_run):
    from jaxrl_llm.train.checkpoint import Checkpointer
    from jaxrl_llm.train.state import TrainState

    # The run's own architecture wins over this section's (which says 2 layers of width 128).
    with pytest.warns(UserWarning, match=r"ignoring .*model.hidden_size=128 \(checkpoint: 32\)"):
        _, parts, params, _, _ = build_policy(_cfg(f"--config.model.init_from=orbax:{sft_run}"))
    assert params["embed"].shape == (128, 32)
    saved = Checkpointer(os.path.join(sft_run, "checkpoints")).restore_params({"params": params}["params"])
    for a, b in zip(_leaves(params), _leaves(saved)):
        np.testing.assert_array_equal(a, b)
    del TrainState


def test_export_command_then_hf_init_round_trips_bitwise(sft_run, tmp_path):
    hf_dir = tmp_path / "hf"
    assert cli.main(["export", "--config", "configs/sft_tiny.py", f"--config.model.init_from=orbax:{sft_run}",
                     f"--config.export.hf_dir={hf_dir}", *SMALL]) == 0
    assert {"config.json", "model.safetensors"} <= set(os.listdir(hf_dir))
    _, _, from_orbax, _, _ = build_policy(_cfg(f"--config.model.init_from=orbax:{sft_run}", *SMALL))
    _, _, from_hf, _, _ = build_policy(_cfg(f"--config.model.init_from=hf:{hf_dir}", *SMALL))
    assert jax.tree.structure(from_orbax) == jax.tree.structure(from_hf)
    for a, b in zip(_leaves(from_orbax), _leaves(from_hf)):
        np.testing.assert_array_equal(a, b)


def test_export_needs_a_source_and_a_folder(tmp_path):
    with pytest.raises(ValueError, match="export.hf_dir must name"):
        from jaxrl_llm.train.export import run_export
        run_export(_cfg())
    with pytest.raises(ValueError, match="model.init_from must name what to export"):
        run_export(_cfg(f"--config.export.hf_dir={tmp_path}"))


def test_sft_from_an_hf_folder_continues_from_its_weights(sft_run, tmp_path):
    """sft with init_from=hf: the first loss equals the exported model's loss, not a random init's."""
    hf_dir = tmp_path / "hf"
    assert cli.main(["export", "--config", "configs/sft_tiny.py", f"--config.model.init_from=orbax:{sft_run}",
                     f"--config.export.hf_dir={hf_dir}"]) == 0
    _sft(tmp_path / "cont", f"--config.model.init_from=hf:{hf_dir}", f"--config.export.hf_dir={tmp_path / 'hf2'}")
    with open(os.path.join(sft_run, "metrics.jsonl")) as f:
        first_run = [json.loads(line) for line in f]
    with open(tmp_path / "cont" / "metrics.jsonl") as f:
        second = [json.loads(line) for line in f]
    random_start = first_run[0]["loss"]
    assert second[0]["loss"] < random_start - 0.1  # starts where the first run ended
    model, config = load_pretrained(tmp_path / "hf2")
    assert config.hidden_size == 32 and config.num_layers == 1


def test_a_missing_source_fails_before_anything_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.init_from=hf:.*config.json not found"):
        cli.main(["sft", "--config", "configs/sft_tiny.py", f"--config.model.init_from=hf:{tmp_path}",
                  f"--config.output_dir={tmp_path / 'o'}", *QUIET])
    with pytest.raises(FileNotFoundError, match="rl.teacher.source=orbax:.*no such directory"):
        cli.main(["rl", "--config", "configs/opd.py", f"--config.rl.teacher.source=orbax:{tmp_path / 'none'}",
                  f"--config.output_dir={tmp_path / 'r'}"])


@pytest.mark.slow
def test_rl_from_an_orbax_run_with_an_orbax_teacher(sft_run, tmp_path):
    """rl starts from the SFT run (no warm-up) and distils from the same run as an orbax teacher: the
    teacher's log-probs equal the policy's at step 0, so the first KL is 0."""
    args = ["rl", "--config", "configs/opd.py", f"--config.output_dir={tmp_path / 'rl'}",
            f"--config.model.init_from=orbax:{sft_run}", f"--config.rl.teacher.source=orbax:{sft_run}",
            "--config.sft.train.steps=0", "--config.rl.steps=1", "--config.rl.prompts_per_step=2",
            "--config.rl.samples_per_prompt=2", "--config.rl.max_new_tokens=3", "--config.rl.reuse_epochs=1",
            "--config.rl.progress_bar=false", "--config.eval.num_problems=0", "--config.checkpoint.every=0",
            "--config.rl.dgg.window=2", *SMALL]
    assert cli.main(args) == 0
    with open(tmp_path / "rl" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    # The teacher is the policy's own start point: the reverse KL and hence the gradient vanish.
    assert abs(rows[0]["distill/reverse_kl"]) < 1e-6 and rows[0]["grad_norm"] < 1e-6
