"""`tools/bench_train_step.py` and `tools/bench_common.py`: same-run ratios, the torch reference, JSON."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_common  # noqa: E402
import bench_train_step  # noqa: E402

from jaxrl_llm.models.config import tiny  # noqa: E402


def test_interleaved_times_alternates_contenders_after_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench_common.interleaved_times(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then A B A B A B
    assert sorted(times) == ["a", "b"]
    assert all(len(v) == 3 and all(t >= 0 for t in v) for v in times.values())


def test_interleaved_times_settles_each_contender_before_its_timed_call():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench_common.interleaved_times(fns, repeats=2, settle=2)
    assert calls == ["a", "a", "a", "b", "b", "b"] * 2  # two untimed calls, then the timed one
    assert all(len(v) == 2 for v in times.values())


@pytest.mark.parametrize("repeats, warmup, settle", [(0, 0, 0), (2, -1, 0), (2, 0, -1)])
def test_interleaved_times_rejects_bad_counts(repeats, warmup, settle):
    with pytest.raises(ValueError, match="repeats must be >= 1, warmup and settle >= 0"):
        bench_common.interleaved_times({"a": lambda: None}, repeats=repeats, warmup=warmup, settle=settle)


def test_median_paired_ratios_and_peak_flops_by_hand():
    assert bench_common.median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert bench_common.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    assert bench_common.matmul_flops(4) == 128.0
    assert bench_common.best_flops([0.5, 0.25, 1.0], 100.0) == 400.0
    with pytest.raises(ValueError, match="equal lengths; got 2 and 1"):
        bench_common.paired_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        bench_common.median([])


def test_tables_align_and_check_row_widths():
    header, rows = ["", "jax", "torch"], [["tokens/s", "1,000", "50"], ["MFU", "1.0%", "0.1%"]]
    assert bench_common.format_table(header, rows).splitlines() == [
        "            jax  torch",
        "--------  -----  -----",
        "tokens/s  1,000     50",
        "MFU        1.0%   0.1%",
    ]
    assert bench_common.markdown_table(header, rows).splitlines() == [
        "|  | jax | torch |", "|---|---:|---:|", "| tokens/s | 1,000 | 50 |", "| MFU | 1.0% | 0.1% |"]
    for table in (bench_common.format_table, bench_common.markdown_table):
        with pytest.raises(ValueError, match="every row must have 3 cells"):
            table(header, [["MFU", "1.0%"]])


def test_thread_counts_default_to_one_and_the_cores_sorted_and_distinct():
    assert bench_common.thread_counts(None, 2) == [1, 2]
    assert bench_common.thread_counts(None, 1) == [1]  # one core: one setting, not two equal ones
    assert bench_common.thread_counts("4,1,4", 2) == [1, 4]
    assert bench_common.thread_counts(" 2 ", 8) == [2]
    for bad in ("0", "1,-2", "", "1,x", "1.5"):
        with pytest.raises(ValueError, match=r"--torch-threads must be a comma list of integers >= 1 \(e.g. 1,8\)"):
            bench_common.thread_counts(bad, 8)
    with pytest.raises(ValueError, match="--threads must be"):
        bench_common.thread_counts("0", 8, flag="--threads")
    assert bench_common.torch_label(3) == "torch@3"


def test_with_torch_threads_sets_the_count_before_each_call():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen = []
    try:
        one = bench_common.with_torch_threads(lambda: seen.append(torch.get_num_threads()) or "r", 1)
        two = bench_common.with_torch_threads(lambda: seen.append(torch.get_num_threads()), 2)
        bench_common.interleaved_times({"one": one, "two": two}, repeats=2)
        assert seen == [1, 2, 1, 2] and one() == "r"
    finally:
        torch.set_num_threads(before)


def test_run_metadata_names_the_machine(tmp_path):
    meta = bench_common.run_metadata(["python", "tools/x.py", "--flag", "a b"])
    assert meta["command"] == "python tools/x.py --flag 'a b'"
    assert meta["cpu_cores"] == len(os.sched_getaffinity(0))
    assert meta["cpu"] and meta["date_utc"].endswith("UTC")
    assert len(meta["load_average_1m_5m_15m"]) == 3 and min(meta["load_average_1m_5m_15m"]) >= 0
    path = bench_common.write_json(tmp_path / "sub" / "r.json", meta)
    assert json.loads(path.read_text()) == meta


def test_model_flops_and_matmul_params_by_hand():
    config = tiny()  # V=128, D=64, L=2, H=4, Dh=16, untied
    assert bench_train_step.model_flops_per_token(config, 32, 1000) == 6 * 1000 + 12 * 2 * 4 * 16 * 32
    params = {"embed": np.zeros((128, 64)), "w": np.zeros((64, 10)), "lm_head": np.zeros((64, 128))}
    assert bench_train_step.count_matmul_params(params, config) == 64 * 10 + 64 * 128
    shapes = {k: v.shape for k, v in params.items()}  # the script passes shape tuples
    assert bench_train_step.count_matmul_params(shapes, config) == 64 * 10 + 64 * 128
    tied = tiny(tie_word_embeddings=True)
    assert bench_train_step.count_matmul_params({"embed": np.zeros((128, 64)), "w": np.zeros((64, 10))},
                                                tied) == 64 * 10 + 128 * 64


def test_synthetic_batch_masks_the_prompt_quarter():
    batch = bench_train_step.synthetic_batch(50, 3, 8)
    assert all(v.shape == (3, 8) and v.dtype == np.int32 for v in batch.values())
    assert (batch["loss_mask"][:, :2] == 0).all() and (batch["loss_mask"][:, 2:] == 1).all()
    assert (batch["positions"] == np.arange(8)).all() and (batch["segment_ids"] == 1).all()
    assert batch["tokens"].min() >= 0 and batch["tokens"].max() < 50


def test_torch_blocker_names_why_the_comparison_cannot_run():
    config = tiny()
    assert bench_train_step.torch_blocker(config, 1, "auto") is None
    assert bench_train_step.torch_blocker(config, 1, "off") == "--compare-torch off"
    assert "mesh has 8 devices" in bench_train_step.torch_blocker(config, 8, "on")
    assert "param_dtype='bfloat16'" in bench_train_step.torch_blocker(tiny(param_dtype="bfloat16"), 1, "on")
    hybrid = tiny(layer_types=("kda", "attention"))
    assert "no transformers equivalent" in bench_train_step.torch_blocker(hybrid, 1, "auto")
    with pytest.raises(ValueError, match="--compare-torch must be one of"):
        bench_train_step.torch_blocker(config, 1, "yes")


def test_torch_loss_matches_the_jax_masked_next_token_loss():
    torch = pytest.importorskip("torch")
    from jaxrl_llm.train.loss import masked_next_token_loss

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, (2, 6)).astype(np.int32)
    loss_mask = np.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1]], np.int32)
    segment_ids = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)  # packing and padding
    want_sum, want_count, _ = masked_next_token_loss(logits, tokens, loss_mask, segment_ids)
    got_sum, got_count = bench_train_step.torch_masked_next_token_loss(
        torch.from_numpy(logits), torch.from_numpy(tokens), torch.from_numpy(loss_mask), torch.from_numpy(segment_ids))
    assert float(got_count) == float(want_count) == 6.0  # targets: row 0 at t = 2, 4; row 1 at t = 1, 2, 4, 5
    np.testing.assert_allclose(float(got_sum), float(want_sum), rtol=1e-5)


def test_cli_times_jax_and_torch_and_writes_json(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--model", "num_layers=1", "--mesh", "1,1,1", "--batch-size", "2",
            "--seq-len", "8", "--steps", "2", "--warmup", "0", "--matmul-size", "64", "--torch-threads", "2,1",
            "--out", str(out)]
    try:
        assert bench_train_step.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["command"].startswith("python tools/bench_train_step.py --preset tiny")
    assert result["model_overrides"] == {"num_layers": 1} and result["torch_compared"] is True
    assert result["steps"] == 2 and result["timing"] == "interleaved jax/torch@1/torch@2, median of steps"
    # One tiny layer: q, o 64x64; k, v 64x32; q/k/v biases; 3 MLP 64x128; 2 norms. Plus embed, lm_head, norm.
    layer = 2 * 64 * 64 + 2 * 64 * 32 + (64 + 32 + 32) + 3 * 64 * 128 + 2 * 64
    assert result["params"] == layer + 2 * 128 * 64 + 64 and result["matmul_params"] == layer + 128 * 64 + 64
    for key in ("jax_tokens_per_s", "torch_tokens_per_s", "jax_mfu", "torch_mfu", "speedup_vs_torch",
                "peak_tflops", "jax_matmul_tflops", "torch_matmul_tflops", "cpu", "date_utc"):
        assert result[key] > 0 if isinstance(result[key], float) else result[key]
    tokens = 2 * 8
    assert result["jax_tokens_per_s"] == pytest.approx(tokens / result["jax_step_s_median"])
    assert result["speedup_vs_torch"] == pytest.approx(result["jax_tokens_per_s"] / result["torch_tokens_per_s"])
    assert result["jax_mfu"] / result["torch_mfu"] == pytest.approx(result["speedup_vs_torch"])
    assert result["speedup_vs_torch_paired_min"] <= result["speedup_vs_torch_paired_max"]
    # Torch at both thread counts, compared at the faster median; the unsuffixed keys are that setting's.
    by_threads = result["torch_by_threads"]
    assert result["torch_thread_counts"] == [1, 2] and sorted(by_threads) == ["1", "2"]
    best = result["torch_best_threads"]
    assert best == result["torch_threads"] == min((1, 2), key=lambda n: by_threads[str(n)]["step_s_median"])
    assert result["torch_step_s_median"] == by_threads[str(best)]["step_s_median"]
    assert result["speedup_vs_torch"] == pytest.approx(by_threads[str(best)]["step_s_median"]
                                                       / result["jax_step_s_median"])
    assert result["speedup_vs_torch"] == min(d["speedup_vs_torch"] for d in by_threads.values())  # the hardest one
    assert result["torch_matmul_tflops"] == max(d["matmul_tflops"] for d in by_threads.values())
    assert result["peak_tflops"] == max(result["jax_matmul_tflops"], result["torch_matmul_tflops"])
    for d in by_threads.values():
        assert d["speedup_vs_torch"] == pytest.approx(d["step_s_median"] / result["jax_step_s_median"])
        assert d["tokens_per_s"] == pytest.approx(tokens / d["step_s_median"])
        assert d["speedup_vs_torch_paired_min"] <= d["speedup_vs_torch_paired_max"]
        # Same weights, batch, loss and optimizer, one torch model per thread count: each does JAX's work.
        assert d["first_loss"] == pytest.approx(result["jax_first_loss"], rel=1e-5)
        assert d["final_loss"] == pytest.approx(result["jax_final_loss"], rel=1e-4)
    assert result["jax_final_loss"] != result["jax_first_loss"]  # the updates were applied
    printed = capsys.readouterr().out
    assert result["cpu"] in printed and f"speedup vs torch@{best} (best; tokens/s ratio)" in printed
    header = printed.splitlines()[0].split()
    assert header == ["jax", "torch@1", "torch@2"]


@pytest.mark.parametrize("value", ["0", "1,0", "two", ""])
def test_cli_rejects_a_bad_torch_thread_count(value, capsys):
    with pytest.raises(SystemExit):
        bench_train_step.parse_args(["--torch-threads", value])
    assert "--torch-threads must be a comma list of integers >= 1" in capsys.readouterr().err
    assert bench_train_step.parse_args(["--torch-threads", "3,1,3"]).torch_threads == [1, 3]


def test_cli_rejects_a_forced_torch_comparison_on_a_multi_device_mesh():
    with pytest.raises(SystemExit, match="--compare-torch on, but the mesh has 2 devices"):
        bench_train_step.main(["--mesh", "1,2,1", "--compare-torch", "on", "--batch-size", "2", "--seq-len", "4"])
