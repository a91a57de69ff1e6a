"""The methods experiment's bookkeeping: gains against the same seed's GRPO run, verdicts, the table."""

import importlib.util
import os

import pytest

spec = importlib.util.spec_from_file_location("exp_methods", os.path.join("tools", "exp_methods.py"))
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)


def run(method, seed, final, before=0.3):
    return {"method": method, "seed": seed, "accuracy_before": before, "final_accuracy": final,
            "final_greedy_accuracy": final, "response_length": 4.0, "metric": "m", "metric_mean": 1.0,
            "wall_time_s": 10.0, "curve": [(0, before), (100, final)]}


def test_gains_are_per_seed_against_grpo_and_verdicts_follow_the_claim():
    results = [run("grpo", 0, 0.50), run("grpo", 1, 0.40),
               run("dapo", 0, 0.55), run("dapo", 1, 0.45),        # better on both seeds
               run("sdar", 0, 0.52), run("sdar", 1, 0.30),        # mean < 0: the claimed gain does not show
               run("rloo", 0, 0.51), run("rloo", 1, 0.41),        # a "matches" claim within 3 points
               run("bcpg_nsa", 0, 0.505), run("bcpg_nsa", 1, 0.40)]  # +0.25 points: within noise
    rows = {r["method"]: r for r in exp.summarize(results)}
    assert rows["dapo"]["gain_vs_grpo_per_seed"] == pytest.approx([0.05, 0.05])
    assert exp.verdict(rows["dapo"]) == "holds"
    assert exp.verdict(rows["sdar"]) == "does not show"
    assert exp.verdict(rows["rloo"]) == "holds" and exp.verdict(rows["grpo"]) == "-"
    assert exp.verdict(rows["bcpg_nsa"]) == "within noise"
    table = exp.markdown_table(list(rows.values()))
    assert "| dapo |" in table and "+5.0" in table and table.count("\n") == len(rows) + 1
