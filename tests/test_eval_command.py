"""Held-out evaluation (`train/eval_run.py`, `cli eval`): pass@k, maj@k, response lengths, the command."""

import functools
import itertools
import json
import os
from fractions import Fraction
from math import comb

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm import cli
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.envs.math_task import MathAnswerTask
from jaxrl_llm.models.config import tiny
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.rollout.sampler import FINISH_LENGTH, FINISH_STOP
from jaxrl_llm.train import eval_run
from jaxrl_llm.train.eval_run import (
    evaluate,
    is_correct,
    length_stats,
    majority_answer,
    majority_vote,
    metrics_table,
    pass_at_k,
    response_answer,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_CONFIG = os.path.join(ROOT, "configs", "sft_tiny.py")
TINY = ["--config.mesh.fsdp=1", "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
        "--config.model.num_layers=1", "--config.model.head_dim=8", "--config.data.level=0",
        "--config.eval.num_problems=12", "--config.eval.batch_size=8", "--config.eval.max_new_tokens=3",
        "--config.train.progress_bar=false"]


def enumerated_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (c of them correct) holding a correct one, exactly."""
    subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def test_pass_at_k_matches_enumeration_and_hand_values():
    values = [pass_at_k(5, 2, k) for k in range(1, 6)]
    assert values == [float(enumerated_pass_at_k(5, 2, k)) for k in range(1, 6)]
    assert values == [0.4, 0.7, 0.9, 1.0, 1.0]  # 2/5, 1 - 3/10, 1 - 1/10, then a correct one is always drawn
    assert [pass_at_k(5, 0, k) for k in range(1, 6)] == [0.0] * 5
    assert [pass_at_k(5, 5, k) for k in range(1, 6)] == [1.0] * 5
    # Large n: exact integers, so no cancellation where 1 - C(n-c,k)/C(n,k) is tiny or near 1.
    assert pass_at_k(1000, 1, 1) == 0.001
    assert pass_at_k(200, 100, 100) == float(1 - Fraction(comb(100, 100), comb(200, 100)))
    assert pass_at_k(2000, 1, 3) == float(Fraction(3, 2000))
    for bad in ((5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(5, 2, 1.0)


def test_majority_vote_ties_go_to_the_first_seen_and_none_never_wins():
    assert majority_answer(["3", "4", "3"]) == "3"
    assert majority_answer(["4", "3", "3", "4"]) == "4"  # a 2-2 tie: "4" was seen first
    assert majority_answer(["3", "4", "4", "3"]) == "3"
    assert majority_answer([None, None, None, "5"]) == "5"  # None is the most common, but never wins
    assert majority_answer([None, "7", None, "8"]) == "7"
    assert majority_answer([None, None]) is None and majority_answer([]) is None
    right = {"3"}.__contains__
    assert majority_vote(["3", "4", "3"], right) == 1.0
    assert majority_vote(["4", "3", "3", "4"], right) == 0.0
    assert majority_vote([None, None, "3"], right) == 1.0
    assert majority_vote([None, None], lambda a: True) == 0.0  # nothing parsed: no vote


def test_answers_come_from_the_task_else_the_normalised_text():
    arithmetic = ArithmeticTask(1)
    assert response_answer(arithmetic, " 042 and more") == "42"
    assert response_answer(arithmetic, "x42") is None
    math = MathAnswerTask([("What is half of one?", "1/2")])
    assert response_answer(math, "so \\boxed{\\frac{1}{2}}") == response_answer(math, "it is 0.5") == "1/2"
    assert response_answer(math, "no idea") is None
    assert response_answer(object(), "  the  answer\n is 4 ") == "the answer is 4"
    assert response_answer(object(), " \n ") is None
    assert is_correct(1.0) and not is_correct(0.99) and is_correct(np.array([1.0, 1.0])) \
        and not is_correct(np.array([1.0, 0.0]))


def test_length_stats_count_only_samples_that_ran_out_of_tokens():
    stats = length_stats(np.array([3, 5, 5, 2]), np.array([FINISH_STOP, FINISH_LENGTH, FINISH_STOP, FINISH_LENGTH]))
    # Row 3 is the stop token arriving exactly at max_new_tokens: finished, not truncated.
    assert stats == {"mean_length": 3.75, "max_length": 5.0, "truncated": 0.5}
    with pytest.raises(ValueError, match="lengths"):
        length_stats(np.array([]), np.array([]))


def test_metrics_table_lists_each_metric():
    table = metrics_table({"accuracy": 0.5, "pass@2": 0.75, "num_problems": 4}).splitlines()
    assert table[0].split("|")[0].strip() == "metric" and table[0].split("|")[1].strip() == "value"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["0.5000", "0.7500", "4"]


class LengthParity:
    """Held-out arithmetic prompts; correct iff the response has an even length, answer its parity."""

    def __init__(self):
        self.base = ArithmeticTask(0)

    def eval_set(self, n, seed=0):
        return self.base.eval_set(n, seed)

    def score(self, problem, response):
        return float(len(response) % 2 == 0)

    def extract_answer(self, response):
        return "even" if len(response) % 2 == 0 else "odd"


@functools.cache
def random_policy():
    config = tiny(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, head_dim=8)
    parts, params, rest, _ = init_sharded(lambda: Decoder(config, rngs=nnx.Rngs(3)), make_mesh(1, 1, 1))
    params = jax.tree.map(lambda x: x, params)
    params["embed"] = params["embed"] * 20.0  # peaked next-token distributions: responses of mixed length
    return parts, params, rest


def test_evaluate_metrics_agree_with_its_per_problem_records():
    parts, params, rest = random_policy()
    task, tok = LengthParity(), CharTokenizer()
    problems = task.eval_set(6, seed=0)
    stop_ids = list(range(40, 90))  # about half of the ids stop a sample: some rows end early, some run out
    k, max_new = 4, 4
    result = evaluate(parts, params, rest, task, tok, problems, k=k, temperature=1.0, top_p=1.0,
                      max_new_tokens=max_new, batch_size=4, stop_ids=stop_ids, key=jax.random.key(5))
    m = result.metrics
    assert m["num_problems"] == 6 and m["samples"] == k and len(result.samples) == 6 * k
    assert len(result.records) == 6 and all(len(r["samples"]) == k for r in result.records)
    counts = [r["num_correct"] for r in result.records]
    for j in range(1, k + 1):  # the estimator averaged over problems, and monotone in j
        assert m[f"pass@{j}"] == pytest.approx(np.mean([float(enumerated_pass_at_k(k, c, j)) for c in counts]))
    assert [m[f"pass@{j}"] for j in range(1, k + 1)] == sorted(m[f"pass@{j}"] for j in range(1, k + 1))
    assert m["pass@1"] == pytest.approx(np.mean([s["correct"] for r in result.records for s in r["samples"]]))
    votes = []
    for r in result.records:
        parities = [s["answer"] for s in r["samples"]]
        even, odd = parities.count("even"), parities.count("odd")
        votes.append(float(even > odd or (even == odd and parities[0] == "even")))
        assert r["majority"] == ("even" if votes[-1] else "odd")
    assert m[f"maj@{k}"] == pytest.approx(np.mean(votes))
    # Truncation accounting against the sampler's own rows.
    response, lengths = np.asarray(result.rollout.response), np.asarray(result.rollout.lengths)
    ran_out = [int(n) == max_new and int(row[n - 1]) not in stop_ids for row, n in zip(response, lengths)]
    flags = [s["truncated"] for r in result.records for s in r["samples"]]
    assert flags == ran_out and 0 < sum(flags) < len(flags), flags
    assert m["truncated"] == pytest.approx(np.mean(ran_out))
    assert m["mean_length"] == pytest.approx(lengths.mean()) and m["max_length"] == lengths.max()
    assert [s["length"] for r in result.records for s in r["samples"]] == lengths.tolist()
    assert m["accuracy"] == np.mean([r["greedy"]["score"] for r in result.records])
    again = evaluate(parts, params, rest, task, tok, problems, k=k, temperature=1.0, top_p=1.0,
                     max_new_tokens=max_new, batch_size=4, stop_ids=stop_ids, key=jax.random.key(5))
    assert again.samples == result.samples and again.metrics == m  # one key, the same samples


def sft_run(tmp_path, capsys):
    run_dir = tmp_path / "sft"
    assert cli.main(["sft", "--config", SFT_CONFIG, f"--config.output_dir={run_dir}", *TINY,
                     "--config.train.steps=40", "--config.train.batch_size=16", "--config.train.log_every=20",
                     "--config.optimizer.warmup_steps=5", "--config.optimizer.learning_rate=1e-2",
                     "--config.data.num_train=500", "--config.checkpoint.every=0"]) == 0
    out = capsys.readouterr().out
    return run_dir, out, json.loads(out[out.index("{"): out.rindex("}") + 1])


def test_eval_command_on_an_sft_checkpoint_reports_its_accuracy_and_sampling_metrics(tmp_path, capsys):
    run_dir, sft_out, sft = sft_run(tmp_path, capsys)
    output = tmp_path / "report" / "eval.json"
    assert cli.main(["eval", "--config", SFT_CONFIG, f"--config.output_dir={tmp_path / 'unused'}", *TINY,
                     f"--config.eval.checkpoint={run_dir}", "--config.eval.samples=4",
                     f"--config.eval.output={output}"]) == 0
    out = capsys.readouterr().out
    report = json.loads(output.read_text())
    m = report["metrics"]
    assert {"accuracy", "pass@1", "pass@2", "pass@3", "pass@4", "maj@4", "mean_length", "max_length",
            "truncated"} <= set(m)
    passes = [m[f"pass@{j}"] for j in range(1, 5)]
    assert passes == sorted(passes) and all(0.0 <= p <= 1.0 for p in passes)
    assert 0.0 <= m["maj@4"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["truncated"] <= 1.0
    lengths = [s["length"] for r in report["problems"] for s in r["samples"]]
    assert len(lengths) == 4 * m["num_problems"]
    assert m["mean_length"] == pytest.approx(np.mean(lengths)) and m["max_length"] == max(lengths)
    # The same problems and the same weights as the SFT run's own evaluation: the same greedy answers.
    assert m["accuracy"] == sft["eval_accuracy"] and m["num_problems"] == sft["eval_num_problems"] == 12
    assert f"held-out greedy exact-match accuracy: {m['accuracy']:.3f}" in sft_out
    for record in report["problems"][:5]:  # the examples the SFT run printed
        completion = record["greedy"]["text"]
        assert f"  {record['prompt']}{completion!r:<8} (reference {record['reference']})" in sft_out
    assert report["settings"]["checkpoint"] == str(run_dir) and report["task"] == "arithmetic"
    assert m["pass@1"] == pytest.approx(np.mean([s["correct"] for r in report["problems"] for s in r["samples"]]))
    table = out[out.index("metric "):].splitlines()
    assert table[0].replace(" ", "") == "metric|value" and any(line.startswith("maj@4 ") for line in table)
    summary = json.loads(out[out.index("{"): out.rindex("}") + 1])
    assert summary["output"] == str(output) and summary["pass@4"] == m["pass@4"]


def fail_if_built(*args, **kwargs):
    raise AssertionError("the model was built before the config was checked")


@pytest.mark.parametrize("override, message", [
    ("eval.checkpoint={missing}", r"eval.checkpoint='.*missing': no such directory"),
    ("eval.checkpoint={empty}", r"eval.checkpoint.*empty.*no checkpoint step"),
    ("eval.top_p=0", r"eval.top_p must be in \(0, 1\]"),
    ("eval.samples=-1", r"eval.samples must be an integer >= 0"),
    ("eval.num_problems=0", r"eval.num_problems must be an integer >= 1"),
])
def test_bad_eval_fields_fail_naming_the_field_before_anything_is_built(tmp_path, monkeypatch, override, message):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(eval_run, "build_policy", fail_if_built)
    monkeypatch.setattr(eval_run, "build_model", fail_if_built)
    monkeypatch.setattr(eval_run, "make_greedy_generate", fail_if_built)
    arg = "--config." + override.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        cli.main(["eval", "--config", SFT_CONFIG, f"--config.output_dir={tmp_path}", *TINY, arg])


def test_eval_help_lists_the_eval_fields(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for field in ("eval.samples = 1 (int)", "eval.temperature = 1.0 (float)", "eval.top_p = 1.0 (float)",
                  "eval.output = '' (str)", "eval.checkpoint = '' (str)"):
        assert field in out
    assert cli.main(["--help"]) == 0
    assert "  eval " in capsys.readouterr().out


RL_SMALL = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.prompts_per_step": 4, "rl.samples_per_prompt": 2,
    "rl.max_new_tokens": 3, "eval.num_problems": 5, "eval.batch_size": 4, "eval.max_new_tokens": 3,
}


@pytest.mark.parametrize("samples", [3, 0])
def test_rl_periodic_eval_reports_pass_maj_and_lengths_from_evaluate(tmp_path, samples):
    from jaxrl_llm.train.rl import evaluate_policy, setup_rl

    cfg = cli.load_config_file(os.path.join(ROOT, "configs", "quickstart.py"))
    for key, value in {**RL_SMALL, "output_dir": str(tmp_path), "eval.samples_per_prompt": samples}.items():
        cli.apply_override(cfg, key, str(value))
    setup = setup_rl(cfg, warm_up=False)
    metrics = evaluate_policy(setup, setup.state.params)
    if samples == 0:  # greedy only, as before
        assert sorted(metrics) == ["eval/accuracy", "eval/greedy_accuracy"]
        assert metrics["eval/accuracy"] == metrics["eval/greedy_accuracy"]
        return
    assert sorted(metrics) == ["eval/accuracy", "eval/greedy_accuracy", "eval/maj@3", "eval/mean_length",
                               "eval/pass@3", "eval/truncated"]
    direct = evaluate(setup.parts, setup.state.params, setup.rest, setup.task, setup.tokenizer, setup.eval_problems,
                      k=3, temperature=1.0, top_p=1.0, max_new_tokens=3, batch_size=4, key=eval_run.eval_key(0))
    assert metrics["eval/accuracy"] == direct.metrics["pass@1"]  # the share of correct samples, as before
    assert metrics["eval/greedy_accuracy"] == direct.metrics["accuracy"]
    assert metrics["eval/pass@3"] == direct.metrics["pass@3"] and metrics["eval/maj@3"] == direct.metrics["maj@3"]
    assert metrics["eval/truncated"] == direct.metrics["truncated"]
    assert metrics["eval/mean_length"] == direct.metrics["mean_length"]


def test_truncation_warning_names_the_limit_field_and_the_share():
    with pytest.warns(UserWarning, match=r"RL step 3: 75% of responses reached rl.max_new_tokens=5 tokens"):
        assert eval_run.warn_truncated(0.75, field="rl.max_new_tokens", limit=5, where="RL step 3")
    assert not eval_run.warn_truncated(0.2, field="rl.max_new_tokens", limit=5, where="RL step 3")
