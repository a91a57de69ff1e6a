"""Config files and command-line overrides: typed, checked, and rejected before any work starts."""

import glob
import os
import subprocess
import sys

import pytest
from ml_collections import ConfigDict

from jaxrl_llm import cli
from jaxrl_llm.cli import ConfigError, apply_override, load_config_file, parse_config_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "sft_tiny.py")
SECTIONS = ("model", "mesh", "distributed", "optimizer", "data", "train", "eval", "checkpoint")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "sft_*.py"))))
def test_every_sft_config_file_has_all_sections(path):
    cfg = load_config_file(path)
    assert isinstance(cfg, ConfigDict)
    for section in SECTIONS:
        assert isinstance(cfg[section], ConfigDict), section
    assert isinstance(cfg.seed, int) and isinstance(cfg.output_dir, str) and cfg.train.steps > 0


def test_overrides_are_parsed_by_the_type_of_the_field():
    cfg = parse_config_args([
        "--config", TINY, "--config.train.steps=50", "--config.optimizer.learning_rate", "1e-4",
        "--config.data.packing=true", "--config.output_dir=runs/x", "--config.mesh.fsdp=-1",
    ])
    assert cfg.train.steps == 50 and isinstance(cfg.train.steps, int)
    assert cfg.optimizer.learning_rate == 1e-4
    assert cfg.data.packing is True
    assert cfg.output_dir == "runs/x"
    assert cfg.mesh.fsdp == -1


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("train.stepz", "5", r"unknown config field config\.train\.stepz; fields under train: \["),
        ("trian.steps", "5", r"unknown config field config\.trian"),
        ("train.steps", "abc", r"config\.train\.steps expects an int; got 'abc'"),
        ("train.steps", "1.5", r"config\.train\.steps expects an int"),
        ("optimizer.learning_rate", "fast", r"config\.optimizer\.learning_rate expects a float"),
        ("data.packing", "maybe", r"config\.data\.packing expects a bool"),
        ("train", "3", r"config\.train is a section"),
        ("train.steps.x", "3", r"unknown config field config\.train\.steps\.x"),
    ],
)
def test_unknown_or_ill_typed_overrides_fail_naming_the_key(key, value, match):
    cfg = load_config_file(TINY)
    with pytest.raises(ConfigError, match=match):
        apply_override(cfg, key, value)


def test_bad_override_stops_the_cli_before_the_command_runs(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(cli.COMMANDS, "sft", lambda cfg: calls.append(cfg) or {})
    assert cli.main(["sft", "--config", TINY, "--config.train.stepz=5"]) == 2
    assert "config.train.stepz" in capsys.readouterr().err
    assert calls == []
    assert cli.main(["sft", "--config", TINY, "--config.train.steps=7"]) == 0
    assert len(calls) == 1 and calls[0].train.steps == 7


def test_unknown_command_and_missing_config_are_reported(capsys):
    assert cli.main(["fly", "--config", TINY]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert cli.main(["sft"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err
    assert cli.main(["sft", "--config", "nope.py"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["sft", "--config", TINY, "--steps=3"]) == 2
    assert "unrecognised argument '--steps=3'" in capsys.readouterr().err


def test_module_entry_point_rejects_an_ill_typed_override():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxrl_llm.cli", "sft", "--config", TINY, "--config.train.batch_size=big"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 2
    assert "config.train.batch_size expects an int; got 'big'" in proc.stderr


QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def test_a_kwargs_section_takes_a_key_it_does_not_list():
    cfg = parse_config_args([
        "--config", QUICKSTART, "--config.rl.objective_kwargs.clip_low=0.1",
        "--config.rl.objective_kwargs.loss_agg_mode=token-mean", "--config.rl.advantage_kwargs.norm=false",
        "--config.rl.advantage_kwargs.eps", "1e-6", "--config.rl.objective_kwargs.clip=(0.1, 0.3)",
    ])
    kwargs = cfg.rl.objective_kwargs
    assert kwargs.clip_low == 0.1 and isinstance(kwargs.clip_low, float)
    assert kwargs.loss_agg_mode == "token-mean"
    assert kwargs.clip == (0.1, 0.3)
    assert cfg.rl.advantage_kwargs.norm is False and cfg.rl.advantage_kwargs.eps == 1e-6
    assert set(kwargs) == {"clip_low", "loss_agg_mode", "clip"}


def test_a_listed_kwargs_key_keeps_its_type():
    cfg = load_config_file(os.path.join(ROOT, "configs", "dapo.py"))
    assert cfg.rl.objective_kwargs.clip_high == 0.28  # listed in the recipe
    apply_override(cfg, "rl.objective_kwargs.clip_high", "1")
    assert cfg.rl.objective_kwargs.clip_high == 1.0 and isinstance(cfg.rl.objective_kwargs.clip_high, float)
    with pytest.raises(ConfigError, match=r"config\.rl\.objective_kwargs\.clip_high expects a float"):
        apply_override(cfg, "rl.objective_kwargs.clip_high", "big")


@pytest.mark.parametrize(
    "key, match",
    [
        ("rl.reuse_epochz", r"unknown config field config\.rl\.reuse_epochz; fields under rl: \["),
        ("rl.dgg.tua", r"unknown config field config\.rl\.dgg\.tua; fields under rl\.dgg"),
        ("rl.objective_kwargz.clip_low", r"unknown config field config\.rl\.objective_kwargz"),
        ("rl.objective_kwargs.a.b", r"unknown config field config\.rl\.objective_kwargs\.a"),
    ],
)
def test_a_misspelled_key_outside_a_kwargs_section_still_fails(key, match):
    cfg = load_config_file(QUICKSTART)
    with pytest.raises(ConfigError, match=match):
        apply_override(cfg, key, "1")
