"""`tools/bench_rl_step.py`: this package's GRPO step alone at a tiny shape (peers skipped), and its pieces."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_rl_step  # noqa: E402
from rl_peers import task as bench_task  # noqa: E402

TINY = ["--hidden-size", "32", "--num-layers", "1", "--intermediate-size", "64", "--num-heads", "4",
        "--num-kv-heads", "2", "--head-dim", "8", "--vocab-size", "64", "--prompts", "2", "--samples", "2",
        "--new-tokens", "4", "--prompt-len", "6", "--steps", "2", "--warmup", "1"]


def test_ours_only_run_writes_the_fields_and_tokens_per_s_is_tokens_over_the_median(tmp_path, capsys):
    out = tmp_path / "rl.json"
    missing = tmp_path / "no_venv" / "python"
    assert bench_rl_step.main(TINY + ["--trl-python", str(missing), "--tunix-python", "",
                                      "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_step"] == 2 * 2 * 4
    assert result["shape"]["vocab_size"] == 64 and result["shape"]["dtype"] == "float32"
    assert result["steps"] == 2 and result["warmup"] == 1
    for key in ("date_utc", "command", "cpu", "cpu_cores", "load_average_1m_5m_15m",
                "load_average_1m_5m_15m_at_start", "load_average_1m_5m_15m_after_build"):
        assert key in result, key
    assert len(result["load_average_1m_per_timed_round"]) == 2
    ours = result["contenders"]["ours"]
    assert ours["status"] == "ran" and len(ours["step_s"]) == 2 and ours["params"] > 0
    assert ours["step_s_median"] == float(np.median(ours["step_s"]))
    assert ours["tokens_per_s"] == result["tokens_per_step"] / ours["step_s_median"]
    assert ours["completion_tokens"] == [result["tokens_per_step"]] * 2  # exactly new_tokens per sample
    assert sorted(ours["phases"]) == ["logprob_s", "rollout_s", "update_s"]
    for i, step in enumerate(ours["step_s"]):  # the phases are parts of the step
        assert 0 < sum(v[i] for v in ours["phases"].values()) <= step
    assert all(0.0 <= r <= 1.0 for r in ours["reward_mean"])
    trl = [v for v in result["contenders"].values() if v["framework"] == "trl"]
    assert trl and all(v["status"] == "skipped" and str(missing) in v["reason"] and "pip install" in v["reason"]
                       for v in trl)
    tunix = result["contenders"]["tunix"]
    assert tunix["status"] == "skipped" and "--tunix-python is empty" in tunix["reason"]
    assert result["speedup_vs"] == {} and result["trl_best"] is None
    printed = capsys.readouterr().out
    assert "generated tokens/s" in printed and "skipped" in printed and "Tunix: not run" in printed


def test_reward_is_the_share_of_even_word_ids():
    assert bench_task.even_id_fraction(" w2 w3 w4 w7") == 0.5
    assert bench_task.even_id_fraction(" w10<eos> w12") == 1.0
    assert bench_task.even_id_fraction("") == 0.0 and bench_task.even_id_fraction("<pad>") == 0.0


def test_tokenizer_maps_each_word_to_its_own_id_without_bos(tmp_path):
    from tokenizers import Tokenizer

    folder = bench_task.write_tokenizer(str(tmp_path / "tok"), 50)
    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    ids = bench_task.prompt_ids(np.random.default_rng(3), 7, 50)
    assert all(bench_task.FIRST_WORD_ID <= i < 50 for i in ids)
    text = bench_task.prompt_text(ids)
    assert tok.encode(text).ids == ids and tok.decode(ids) == text
    assert tok.get_vocab_size() == 50 and tok.token_to_id("<pad>") == 0 and tok.token_to_id("<eos>") == 1
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<eos>" and "bos_token" not in config
    prompts = bench_task.benchmark_prompts(3, 5, 50, seed=1)
    assert prompts == bench_task.benchmark_prompts(3, 5, 50, seed=1) and len(set(prompts)) == 3


def test_ratio_is_peer_time_over_ours_with_the_per_round_range():
    ours = {"step_s": [1.0, 2.0, 4.0], "step_s_median": 2.0}
    peer = {"step_s": [3.0, 4.0, 4.0], "step_s_median": 4.0}
    assert bench_rl_step.ratios(ours, peer) == {"median": 2.0, "paired_min": 1.0, "paired_max": 3.0}
    assert bench_rl_step.ratios(ours, {"status": "skipped"}) is None


def test_the_faster_trl_thread_setting_counts():
    entries = {"ours": {"framework": "ours", "step_s_median": 1.0},
               "trl_1_thread": {"framework": "trl", "step_s_median": 5.0},
               "trl_2_threads": {"framework": "trl", "step_s_median": 20.0},
               "tunix": {"framework": "tunix", "step_s_median": 0.5}}
    assert bench_rl_step.best_trl(entries) == "trl_1_thread"
    assert bench_rl_step.best_trl({"trl_1_thread": {"framework": "trl", "status": "skipped"}}) is None


@pytest.mark.parametrize("flags, message", [
    (["--samples", "1"], "--samples must be >= 2"),
    (["--num-heads", "3"], "--num-heads 3 must be a multiple of --num-kv-heads 2"),
    (["--vocab-size", "3"], "--vocab-size must be > 3"),
    (["--steps", "0"], "--steps must be >= 1"),
])
def test_bad_flags_are_named(flags, message, capsys):
    with pytest.raises(SystemExit):
        bench_rl_step.parse_args(flags)
    assert message in capsys.readouterr().err
