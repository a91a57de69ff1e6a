"""DPO-VP rounds: the verifier mapping, pair building, the per-round reference reset, and a CLI run."""

import math
import os

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.rollout.sampler import FINISH_LENGTH, FINISH_STOP
from jaxrl_llm.train import dpo_vp
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.dpo_vp import (
    UNREADABLE,
    check_prompt_lengths,
    cycled,
    round_pairs,
    run_dpo_vp,
    score_samples,
    verifier_scores,
)
from jaxrl_llm.train.metrics import read_jsonl

SMALL = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "sft.train.steps": 0, "dpo.steps_per_round": 3, "dpo.batch_size": 8, "dpo.log_every": 1,
    "dpo.progress_bar": False, "dpo.optimizer.learning_rate": 3e-3, "dpo.optimizer.warmup_steps": 0,
    "dpo_vp.rounds": 2, "dpo_vp.temperatures": "(1.0, 1.0)", "dpo_vp.prompts_per_round": 16,
    "eval.num_problems": 16, "eval.batch_size": 16,
}


def small_config(out="unused", **overrides):
    cfg = load_config_file("configs/dpo_vp.py")
    for key, value in {**SMALL, "output_dir": str(out), **overrides}.items():
        apply_override(cfg, key, str(value))
    return cfg


class Problem:
    def __init__(self, prompt):
        self.prompt = prompt


# ------------------------------------------------------------------------------------- (a) verifier

def test_verifier_maps_correct_wrong_and_truncated_to_1_0_minus_1():
    correct = np.array([True, False, True, False])
    finished = np.array([True, True, False, False])
    np.testing.assert_array_equal(verifier_scores(correct, finished), [1, 0, -1, -1])


def test_sample_scores_use_the_task_verdict_eos_and_readability():
    task = ArithmeticTask(1)
    problem = task.sample_batch(1, seed=0)[0]
    wrong = str(int(problem.reference) + 1)
    texts = [problem.reference, wrong, problem.reference, problem.reference + UNREADABLE]
    finish = np.array([FINISH_STOP, FINISH_STOP, FINISH_LENGTH, FINISH_STOP])
    scores, correct = score_samples(task, [problem], texts, finish, 4)
    # A right answer cut off before eos, or followed by junk ids, is a format failure.
    np.testing.assert_array_equal(scores, [1, 0, -1, -1])
    np.testing.assert_array_equal(correct, [True, False, True, True])


# ---------------------------------------------------------------------------------------- (b) pairs

def test_pairs_follow_the_spec_cases_d2_and_d3():
    # Prompt 0 is D2 (chosen 1: 2100 >= 2048 is skipped; rejected a v=-1 sample), prompt 1 is D3 (skipped).
    scores = [1, 1, 0, -1, 0, 1, 0, -1] + [1] * 8
    lengths = [300, 900, 500, 200, 1000, 2100, 400, 600] + [10] * 8
    texts = [f"a{j}" for j in range(8)] + [f"b{j}" for j in range(8)]
    pairs, rows = round_pairs([Problem("1+1="), Problem("2+2=")], texts, np.array(scores), np.array(lengths), 8,
                              seed=0, max_chosen_length=2048)
    assert rows.shape == (1, 3) and tuple(rows[0, :2]) == (0, 1) and rows[0, 2] in (3, 7)
    assert pairs == [{"prompt": "1+1=", "chosen": "a1", "rejected": f"a{rows[0, 2]}"}]


def test_pairs_follow_the_spec_case_d4_and_strip_unreadable_rejections():
    texts = ["10", "300", "2" + UNREADABLE]
    for seed in range(6):
        pairs, rows = round_pairs([Problem("9+9=")], texts, np.array([0, 0, 0]), np.array([100, 300, 200]), 3,
                                  seed=seed, max_chosen_length=2048)
        assert rows[0, 1] == 1 and rows[0, 2] in (0, 2)
        assert pairs[0]["chosen"] == "300" and pairs[0]["rejected"] == {0: "10", 2: "2"}[int(rows[0, 2])]


def test_few_pairs_are_cycled_up_to_the_batch():
    encoded = {"tokens": np.arange(3 * 2 * 4).reshape(3, 2, 4)}
    out = cycled(encoded, 8)
    assert out["tokens"].shape == (9, 2, 4)
    np.testing.assert_array_equal(out["tokens"][3:6], encoded["tokens"])
    assert cycled(encoded, 2)["tokens"].shape == (3, 2, 4)


# ------------------------------------------------------------------------------- (c, d) a CLI run

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_vp")
    args = ["dpo_vp", "--config", "configs/dpo_vp.py", f"--config.output_dir={out}"]
    args += [f"--config.{k}={v}" for k, v in SMALL.items()]
    assert cli.main(args) == 0
    return out, read_jsonl(os.path.join(out, "metrics.jsonl"))


def test_cli_run_writes_one_record_per_round_and_a_final_checkpoint(cli_run):
    out, records = cli_run
    rounds = [r for r in records if "round" in r]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["round/pairs"] + r["round/prompts_skipped"] == 16 and r["round/pairs"] >= 1
        assert 0.0 <= r["eval/greedy_accuracy"] <= 1.0 and 0.0 <= r["round/sampled_accuracy"] <= 1.0
    assert [r["step"] for r in rounds] == [3, 6]
    assert records[0] == {"step": 0, "eval/greedy_accuracy": records[0]["eval/greedy_accuracy"]}
    checkpointer = Checkpointer(os.path.join(out, "checkpoints"))
    assert checkpointer.all_steps() == [6]
    checkpointer.close()


def test_reference_is_reset_to_the_policy_at_the_start_of_each_round(cli_run):
    _, records = cli_run
    rounds = [r for r in records if "round" in r]
    # Policy == reference at a round's first step: z = 0, so the DPO loss is -log sigmoid(0) = log 2.
    for r in rounds:
        assert r["round/first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # Round 1 moved the policy, so round 2 starting at log 2 means its reference moved with it.
    assert abs(rounds[0]["round/final_loss"] - math.log(2)) > 1e-3


# -------------------------------------------------------------------------------------- (e) config

def no_build(*args, **kwargs):
    raise AssertionError("the policy was built before the config was checked")


@pytest.mark.parametrize("overrides, message", [
    ({"dpo_vp.temperatures": "(0.7, 1.0, 1.2)"}, r"dpo_vp.temperatures must hold one temperature per round"),
    ({"dpo_vp.temperatures": "(0.7, 0.0)"}, r"dpo_vp.temperatures must all be > 0"),
    ({"dpo_vp.samples_per_prompt": 1}, r"dpo_vp.samples_per_prompt must be >= 2; got 1"),
    ({"dpo.steps_per_round": 0}, r"dpo.steps_per_round must be >= 1; got 0"),
    ({"dpo.micro_batches": 3}, r"dpo.micro_batches=3 must divide dpo.batch_size=8"),
    ({"data.seq_len": 10}, r"data.seq_len=10 is too short .* dpo_vp.max_new_tokens=5"),
])
def test_a_bad_config_fails_before_anything_is_built_naming_the_field(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(dpo_vp, "dpo_trainer", no_build)
    with pytest.raises(ValueError, match=message):
        run_dpo_vp(small_config(tmp_path / "run", **overrides))


def test_prompt_length_check_counts_bos_response_and_eos():
    problems = [Problem("12+34=")]  # 6 characters + bos
    check_prompt_lengths(CharTokenizer(), problems, seq_len=12, max_new_tokens=4)
    with pytest.raises(ValueError, match="raise it to 12"):
        check_prompt_lengths(CharTokenizer(), problems, seq_len=11, max_new_tokens=4)
