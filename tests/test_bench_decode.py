"""`tools/bench_decode.py`: decode rates, bandwidth, greedy parity with `transformers`, JSON."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_common  # noqa: E402
import bench_decode  # noqa: E402


def test_streamed_weight_bytes_skip_only_an_untied_embedding_table():
    params = {"embed": np.zeros((10, 4), np.float32), "lm_head": np.zeros((4, 10), np.float32),
              "layers": {0: {"w": np.zeros((4, 3), np.int8), "scale": np.zeros((1, 3), np.float32)}}}
    assert bench_decode.weight_bytes(params) == 160 + 160 + 12 + 12
    assert bench_decode.streamed_weight_bytes(params, tie_word_embeddings=False) == 160 + 12 + 12
    tied = {k: v for k, v in params.items() if k != "lm_head"}
    assert bench_decode.streamed_weight_bytes(tied, tie_word_embeddings=True) == 160 + 12 + 12


def test_decode_rates_by_hand():
    rates = bench_decode.decode_rates([3.0, 1.0, 2.0], [0.5, 0.7, 0.4], batch=2, n_new=4, streamed_bytes=10**9)
    assert rates["total_s"] == 2.0 and rates["prefill_s"] == 0.5
    assert rates["decode_s"] == 1.5  # 3 one-token steps of 0.5 s
    assert rates["decode_step_ms"] == pytest.approx(500.0)
    assert rates["decode_tok_s"] == pytest.approx(2 * 3 / 1.5)
    assert rates["end_to_end_tok_s"] == pytest.approx(2 * 4 / 2.0)
    assert rates["weight_stream_gb_s"] == pytest.approx(2.0)  # 1 GB per 0.5 s step


def test_stream_bandwidth_counts_a_read_and_a_write():
    assert bench_common.stream_bytes(100) == 200.0
    assert bench_common.best_bandwidth([2.0, 0.5, 1.0], 100) == 400.0
    streamed = np.asarray(bench_common.jax_stream_fn(4096)())
    assert streamed.shape == (1024,) and (streamed == 1.0).all()  # 4096 bytes of float32 zeros, plus one
    with pytest.raises(ValueError, match="nbytes must be >= 4"):
        bench_common.jax_stream_fn(3)


def test_greedy_disagreement_names_the_first_differing_token():
    ours = np.array([[1, 2, 3], [4, 5, 6]])
    assert bench_decode.check_greedy_agreement(ours, ours.copy()) == 6
    theirs = ours.copy()
    theirs[1, 1:] = [9, 7]
    with pytest.raises(RuntimeError, match="differ at 2 of 6 positions; first at row 1, step 1: jax 5 vs torch 9"):
        bench_decode.check_greedy_agreement(ours, theirs)
    with pytest.raises(RuntimeError, match=r"differ in shape: \(2, 3\) vs \(2, 2\)"):
        bench_decode.check_greedy_agreement(ours, ours[:, :2])
    with pytest.raises(RuntimeError, match="JAX fp32 and torch@2 fp32 differ at 2 of 6"):
        bench_decode.check_greedy_agreement(ours, theirs, reference="torch@2 fp32")


def test_cli_times_formats_and_torch_and_writes_json(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    out = tmp_path / "decode.json"
    argv = ["--layers", "1", "--batch", "3", "--prompt-len", "5", "--new-tokens", "8", "--formats", "fp32,int8",
            "--repeats", "1", "--warmup", "0", "--stream-mb", "1", "--torch-threads", "1,2", "--out", str(out)]
    try:
        bench_decode.main(argv)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["command"].startswith("python tools/bench_decode.py --layers 1")
    assert result["torch_compared"] is True and result["greedy_tokens_agree"] is True
    # The script stops with an error unless our fp32 greedy tokens equal transformers' at every position.
    assert result["greedy_tokens_compared"] == 3 * 8 and result["torch_thread_counts"] == [1, 2]
    assert [r["format"] for r in result["results"]] == ["fp32", "int8", "torch@1 fp32", "torch@2 fp32"]
    fp32, int8, *torch_rows = result["results"]
    assert [r["torch_threads"] for r in torch_rows] == [1, 2]
    # The baseline is the torch setting with the shorter decode time; the unsuffixed keys are its figures.
    best = result["torch_best_threads"]
    assert best == result["torch_threads"] == min((1, 2), key=lambda t: torch_rows[t - 1]["decode_s"])
    ref = torch_rows[best - 1]
    by_threads = result["torch_by_threads"]
    assert sorted(by_threads) == ["1", "2"]
    for row in torch_rows:
        d = by_threads[str(row["torch_threads"])]
        assert d["decode_s"] == row["decode_s"] and d["stream_gb_s"] > 0
        assert d["speedup_vs_torch"] == pytest.approx(row["decode_s"] / fp32["decode_s"])
        assert row["speedup_vs_torch"] == pytest.approx(ref["decode_s"] / row["decode_s"])
        assert row["speedup_vs_torch"] <= 1.0  # no torch setting beats the best one
    assert result["torch_stream_gb_s"] == max(d["stream_gb_s"] for d in by_threads.values())
    # One tiny layer (see test_bench_train_step) plus embed, lm_head, final norm; the embedding is not streamed.
    layer = 2 * 64 * 64 + 2 * 64 * 32 + (64 + 32 + 32) + 3 * 64 * 128 + 2 * 64
    assert result["params"] == layer + 2 * 128 * 64 + 64
    assert fp32["streamed_weight_mb"] * 2**20 == ref["streamed_weight_mb"] * 2**20 == 4 * (layer + 128 * 64 + 64)
    assert int8["weight_mb"] < fp32["weight_mb"] / 2
    for row in result["results"]:
        assert row["decode_tok_s"] == pytest.approx(3 * 7 / row["decode_s"])
        assert row["bandwidth_fraction"] == pytest.approx(row["weight_stream_gb_s"] / result["memory_bandwidth_gb_s"])
    for row in (fp32, int8):
        assert row["speedup_vs_torch"] == pytest.approx(ref["decode_s"] / row["decode_s"])
        assert row["compile_s"] > 0
    assert result["speedup_vs_torch"] == fp32["speedup_vs_torch"] == by_threads[str(best)]["speedup_vs_torch"]
    assert result["speedup_vs_torch"] == pytest.approx(ref["decode_s"] / fp32["decode_s"])
    assert result["end_to_end_speedup_vs_torch"] == pytest.approx(ref["total_s"] / fp32["total_s"])
    assert result["speedup_vs_torch"] == pytest.approx(result["jax_fp32_decode_tok_s"] / result["torch_decode_tok_s"])
    assert result["memory_bandwidth_gb_s"] == max(result["jax_stream_gb_s"], result["torch_stream_gb_s"]) > 0
    assert result["cpu"] and result["date_utc"].endswith("UTC") and len(result["load_average_1m_5m_15m"]) == 3
    printed = capsys.readouterr().out
    assert f"speedup vs torch@{best} (best; fp32 decode tok/s)" in printed
    assert "greedy tokens agree at every thread count (24 compared)" in printed
    assert f"vs torch@{best} fp32 (best)" in printed.splitlines()[0]


def test_forced_torch_comparison_needs_the_fp32_format():
    with pytest.raises(SystemExit, match="--compare-torch on, but fp32 is not among --formats"):
        bench_decode.main(["--formats", "int8", "--compare-torch", "on", "--batch", "1", "--new-tokens", "2"])


@pytest.mark.parametrize("flags, message", [(["--new-tokens", "1"], "--new-tokens must be >= 2"),
                                            (["--formats", "fp16"], "--formats must be a non-empty comma list"),
                                            (["--torch-threads", "1,0"], "--torch-threads must be a comma list of "
                                                                         "integers >= 1")])
def test_cli_rejects_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        bench_decode.parse_args(flags)
    assert message in capsys.readouterr().err
