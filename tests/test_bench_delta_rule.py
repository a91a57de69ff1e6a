"""`tools/bench_delta_rule.py`: flop models, the speedup ceiling, the table and the JSON record."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_delta_rule  # noqa: E402


def test_flop_models_by_hand():
    # 6 K V + C (6 K + 4 V) + C^2 / 3 at K = V = 128, C = 64.
    assert bench_delta_rule.forward_flops_per_token_head(128, 128, 64) == pytest.approx(
        98304 + 64 * (768 + 512) + 4096 / 3)
    assert bench_delta_rule.recurrent_flops_per_token_head(128, 64) == 7 * 128 * 64


def test_cli_writes_records_speedups_and_ceilings(tmp_path, capsys):
    out = tmp_path / "dr.json"
    bench_delta_rule.main(["--batch", "1", "--heads", "1", "--seq-lens", "40", "--head-dim", "16",
                           "--chunk-size", "16", "--impls", "recurrent", "chunked",
                           "--variants", "gdn", "--repeats", "1", "--peak-size", "64",
                           "--out", str(out)])
    printed = capsys.readouterr().out
    assert "ceiling (batched dot)" in printed and "chunked/recurrent (median)" in printed
    result = json.loads(out.read_text())
    modes = sorted((r["impl"], r["mode"]) for r in result["records"])
    assert modes == [("chunked", "fwd"), ("chunked", "fwd+bwd"), ("recurrent", "fwd"), ("recurrent", "fwd+bwd")]
    (ceiling,) = result["speedup_ceilings"]
    rec = next(r for r in result["records"] if r["impl"] == "recurrent" and r["mode"] == "fwd")
    # The recurrent rate is the scan's own flop model over its measured median time.
    assert ceiling["recurrent_gflops"] == pytest.approx(40 * 7 * 16 * 16 / (rec["ms"] * 1e-3) / 1e9)
    assert ceiling["flop_ratio"] == pytest.approx(
        bench_delta_rule.forward_flops_per_token_head(16, 16, 16) / (7 * 16 * 16))
    assert ceiling["ceiling"] == pytest.approx(
        ceiling["batched_dot_gflops"] / ceiling["recurrent_gflops"] / ceiling["flop_ratio"])
    fwd = next(r for r in result["chunked_over_recurrent"] if r["mode"] == "fwd")
    assert ceiling["measured"] == fwd["median"]


def test_no_ceiling_without_both_impls(tmp_path):
    out = tmp_path / "dr.json"
    bench_delta_rule.main(["--batch", "1", "--heads", "1", "--seq-lens", "16", "--head-dim", "16",
                           "--chunk-size", "16", "--impls", "chunked", "--variants", "deltanet",
                           "--repeats", "1", "--forward-only", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["speedup_ceilings"] == [] and result["chunked_over_recurrent"] == []
