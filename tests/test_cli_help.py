"""`--help` at every level, and the closing lines a run prints: what a person meets first."""

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from jaxrl_llm import cli
from jaxrl_llm.cli import load_config_file
from jaxrl_llm.objectives import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_commands_and_shipped_configs(capsys, monkeypatch, flag):
    monkeypatch.chdir(ROOT)
    code, out, _ = run_main(capsys, flag)
    assert code == 0
    assert re.search(r"\n  sft +Supervised fine-tuning, then held-out greedy exact-match evaluation\.", out)
    assert re.search(r"\n  rl +RL post-training", out) and re.search(r"\n  dpo_vp +", out)
    assert re.search(r"\n  configs/sft_tiny.py +SFT quickstart: a tiny decoder learns 2-digit addition from scratch on CPU\.", out)
    # A docstring wrapped mid-sentence is shown as its whole first sentence.
    assert "then GRPO with DGG-gated sample reuse (K = 4)." in out


def test_shipped_configs_are_found_from_another_working_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and os.path.join(ROOT, "configs", "quickstart.py") in out
    code, out, _ = run_main(capsys, "rl", "--help")
    assert code == 0 and "rl.reuse_epochs = 4 (int)" in out


def test_no_arguments_is_a_usage_error(capsys):
    code, out, err = run_main(capsys)
    assert code == 2 and out == "" and err.startswith("usage: python -m jaxrl_llm.cli {sft,rl")


def test_rl_help_lists_every_field_with_default_and_type(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, _ = run_main(capsys, "rl", "--help")
    assert code == 0
    assert "fields of configs/quickstart.py (value (type)):" in out
    for line in ("rl.reuse_epochs = 4 (int)", "rl.objective_kwargs = {} (section)",
                 "rl.objective = 'grpo' (str)", "rl.dgg.enabled = True (bool)", "rl.optimizer.learning_rate = 0.0003 (float)",
                 "rl.advantage_kwargs = {} (section)", "output_dir = 'runs/quickstart' (str)", "seed = 0 (int)"):
        assert f"\n  {line}\n" in out, line
    listed = [line.split(" = ")[0].strip() for line in out.splitlines() if " = " in line and line.startswith("  ")]
    assert listed == [key for key, _ in cli.config_fields(load_config_file(QUICKSTART))]
    assert len(listed) == len(set(listed)) > 60
    assert "--config.rl.objective_kwargs.clip_low=0.1" in out


def test_rl_help_lists_the_registered_objectives_and_estimators(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, out, _ = run_main(capsys, "rl", "--help")
    objectives = out.split("registered objectives")[1].split("registered advantage estimators")[0]
    estimators = out.split("registered advantage estimators")[1]
    for name in registry.list_objectives():
        assert name in objectives, name
    for name in registry.list_advantages():
        assert name in estimators, name
    assert {"grpo", "dapo", "tbpo"} <= set(registry.list_objectives())


def test_declared_hyperparameters_are_listed_per_objective(capsys, monkeypatch):
    specs = {"grpo": SimpleNamespace(hparams={"clip_low": 0.2, "loss_agg_mode": "token-mean"})}

    def objective_spec(name):
        return specs[name]

    monkeypatch.setattr(registry, "objective_spec", objective_spec, raising=False)
    monkeypatch.chdir(ROOT)
    _, out, _ = run_main(capsys, "rl", "--help")
    assert "\n  grpo: clip_low=0.2, loss_agg_mode='token-mean'\n" in out
    assert "\n  dapo\n" in out  # KeyError from the spec: the bare name


def test_the_real_registry_declarations_are_listed(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, out, _ = run_main(capsys, "rl", "--help")
    objectives = out.split("registered objectives")[1].split("registered advantage estimators")[0]
    grpo = objectives.split("\n  grpo: ")[1].split("\n  gspo")[0]
    for key, default in registry.objective_spec("grpo").hparams.items():
        assert f"{key}={default!r}" in grpo, key
    estimators = out.split("registered advantage estimators")[1]
    for key, default in registry.advantage_spec("gae").hparams.items():
        assert f"{key}={default!r}" in estimators.split("\n  gae: ")[1].split("\n")[0], key


def test_registry_lines_wrap_bare_names_when_nothing_is_declared():
    assert cli.registry_lines(["a", "b"], None) == ["  a, b"]
    specs = {"b": SimpleNamespace(hparams={"beta": 0.1}, trainer="dpo"), "c": SimpleNamespace(hparams=None),
             "d": SimpleNamespace(hparams={})}
    assert cli.registry_lines(["a", "b", "c", "d"], specs.__getitem__) == [
        "  a", "  b: beta=0.1 [trained by 'dpo']", "  c: any keyword", "  d: no hyperparameters"]


def test_a_long_declaration_wraps_under_its_name():
    spec = SimpleNamespace(hparams={f"hparam_{i}": 0.125 for i in range(12)})
    lines = cli.registry_entry("tbpo", spec).split("\n")
    assert len(lines) > 1 and all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("  tbpo: hparam_0=0.125") and lines[1].startswith("        hparam_")


def test_sft_help_uses_its_default_config_and_lists_no_registry(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = load_config_file(os.path.join(ROOT, "configs", "sft_tiny.py")).train.steps
    code, out, _ = run_main(capsys, "sft", "--help")
    assert code == 0
    assert "fields of configs/sft_tiny.py" in out and f"\n  train.steps = {steps} (int)\n" in out
    assert "registered objectives" not in out


def test_help_with_a_config_shows_it_with_its_overrides_and_runs_nothing(capsys, monkeypatch):
    calls = []
    monkeypatch.setitem(cli.COMMANDS, "rl", lambda cfg: calls.append(cfg) or {})
    code, out, _ = run_main(capsys, "rl", "--config", QUICKSTART, "--config.rl.steps=7",
                            "--config.rl.objective_kwargs.clip_low=0.1", "--help")
    assert code == 0 and calls == []
    assert f"fields of {QUICKSTART} (value (type)):" in out
    assert "\n  rl.steps = 7 (int)\n" in out and "\n  rl.objective_kwargs.clip_low = 0.1 (float)\n" in out


def test_help_errors_exit_2_with_the_reason(capsys, monkeypatch):
    code, _, err = run_main(capsys, "rl", "--config", QUICKSTART, "--config.rl.stepz=7", "--help")
    assert code == 2 and "unknown config field config.rl.stepz" in err
    code, _, err = run_main(capsys, "fly", "--help")
    assert code == 2 and "unknown command 'fly'" in err
    monkeypatch.setattr(cli, "DEFAULT_CONFIGS", {})
    code, _, err = run_main(capsys, "rl", "--help")
    assert code == 2 and "rl has no default config; pass --config FILE" in err


def test_rl_summary_lines_name_sampled_and_greedy_accuracy():
    summary = {"accuracy_before": 0.25, "accuracy_after": 0.5, "greedy_accuracy_before": 0.3,
               "greedy_accuracy_after": 0.625, "eval_accuracy": 0.5, "eval_num_problems": 200, "wall_time_s": 12.34}
    assert cli.summary_lines(summary) == [
        "held-out sampled accuracy before: 0.250, after: 0.500 (+25.0 points, 200 problems)",
        "held-out greedy accuracy before: 0.300, after: 0.625 (+32.5 points, 200 problems)",
        "wall time 12.3 s",
    ]
    resumed = {**summary, "accuracy_before": None, "greedy_accuracy_before": None}
    assert cli.summary_lines(resumed)[:2] == ["held-out sampled accuracy: 0.500 (200 problems)",
                                              "held-out greedy accuracy: 0.625 (200 problems)"]


def test_sft_summary_line_names_greedy_exact_match():
    summary = {"eval_accuracy": 0.875, "eval_num_problems": 100, "wall_time_s": 3.0}
    assert cli.summary_lines(summary) == ["held-out greedy exact-match accuracy: 0.875, 100 problems",
                                          "wall time 3.0 s"]
    assert cli.summary_lines({"steps": 3}) == []


def test_preference_summary_lines_count_pairs():
    summary = {"pref_accuracy_before": 0.5, "pref_accuracy_after": 0.75, "eval_num_pairs": 64,
               "greedy_accuracy_before": 0.2, "greedy_accuracy_after": 0.3, "eval_accuracy": 0.3,
               "eval_num_problems": 100}
    assert cli.summary_lines(summary) == ["held-out greedy accuracy before: 0.200, after: 0.300 (+10.0 points, 100 problems)",
                                          "held-out preference accuracy before: 0.500, after: 0.750 (+25.0 points, 64 pairs)"]


def test_main_prints_the_summary_lines_after_the_json(capsys, monkeypatch):
    summary = {"accuracy_after": 0.5, "greedy_accuracy_after": 0.75, "eval_accuracy": 0.5,
               "eval_num_problems": 8, "wall_time_s": 1.0}
    monkeypatch.setitem(cli.COMMANDS, "rl", lambda cfg: summary)
    code, out, _ = run_main(capsys, "rl", "--config", QUICKSTART)
    assert code == 0
    assert out.rstrip().endswith("held-out sampled accuracy: 0.500 (8 problems)\n"
                                 "held-out greedy accuracy: 0.750 (8 problems)\nwall time 1.0 s")
    assert "exact-match" not in out


def test_module_entry_point_help_exits_0():
    proc = subprocess.run([sys.executable, "-m", "jaxrl_llm.cli", "rl", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "rl.reuse_epochs = 4 (int)" in proc.stdout and "registered objectives" in proc.stdout
