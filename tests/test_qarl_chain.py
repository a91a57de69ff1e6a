"""Error tokens on ArithChain (the grammar, the token mapping, the RL metric) and the QaRL-aligned
learner's log-prob mismatch at int4 in the trainer."""

import numpy as np
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.envs.arith_chain import ArithChainTask, grammar_prefix_length
from jaxrl_llm.envs.error_tokens import (
    degenerate_error_start,
    error_token_counts,
    error_token_metrics,
    has_error_definition,
)
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.train.rl import initial_policy, run_rl, setup_rl
from jaxrl_llm.train.rl_step import collect_rollout_batch

OPERANDS, OPS = (12, 7, 30, 5), ("+", "-", "+")  # 12+7-30+5 = -6
PROBLEM = Problem("12+7-30+5=", "-6", {"operands": OPERANDS, "ops": OPS, "answer": -6})
TASK = ArithChainTask(4, num_digits=2)  # integers of up to len(str(4 * 99)) = 3 digits


@pytest.mark.parametrize("response, start", [
    ("12+7=19;19-30=-11;-11+5=-6;#-6", 30),   # the worked solution: no error
    ("12+7=20;20-30=-10;-10+5=-5;#-5", 30),   # wrong arithmetic carried forward: still well-formed
    ("12+7=19;19-30", 13),                    # unfinished (stopped early): no error
    ("12+7=19;#19", 11),                      # answering before the last step: no error
    ("12+7=19;19-30=-11;-11+5=-6;#-6;", 30),  # text after the answer
    ("12+7=19;19-30=-11;-11+5=-6;#-6-6", 30),
    ("12+7=19;12+7=19;", 9),                  # a repeated step leaves at the `2` where `19` was due
    ("12+7=19;;", 8),                         # a character that cannot continue a step
    ("12+7=19#19", 7),                        # the answer without closing the step
    ("12+8=20;", 3),                          # the wrong operand copied
    ("12+7=19;19-30=-11;-11+5=-6;-6+5=-1;", 27),  # a step beyond the problem's operations
    ("12+7=1999;", 8),                        # a fourth digit
    ("12+7=-;", 6), ("#", 1), ("#x", 1), ("", 0), ("x", 0),
])
def test_error_start_on_hand_written_responses(response, start):
    assert TASK.error_start(PROBLEM, response) == start
    assert grammar_prefix_length(OPERANDS, OPS, response, max_digits=3) == start


def test_the_worked_solution_of_every_drawn_problem_is_well_formed():
    task = ArithChainTask((2, 6), num_digits=3)
    for p in task.sample_batch(100, seed=1):
        solution = task.worked_solution(p)
        assert task.error_start(p, solution) == len(solution)
        assert task.error_start(p, solution + ";") == len(solution)


def test_error_tokens_count_tokens_holding_a_character_past_the_error():
    assert has_error_definition(TASK) and not has_error_definition(object())
    # One character per token: "12+7=19;;x" leaves at index 8, so ";" and "x" are error tokens.
    # Multi-character tokens: "12+7=19;12+7" leaves at index 9, inside the piece "19;12" (characters 5..9).
    pieces = [list("12+7=19;;x"), list("12+7=19;19-30=-11;-11+5=-6;#-6"), ["12+7=", "19;12", "+7"]]
    counts = error_token_counts(TASK, [PROBLEM] * 3, pieces)
    np.testing.assert_array_equal(counts, [2, 0, 2])
    # The rate's denominator is the response length with eos: lengths 11, 31, 4 -> 4 / 46.
    metrics = error_token_metrics(TASK, [PROBLEM] * 3, pieces, np.array([11, 31, 4]), prefix="rollout")
    assert metrics == {"rollout/error_token_rate": pytest.approx(4 / 46), "rollout/garbled_frac": pytest.approx(2 / 3)}
    # A zero-width piece (a special token) past the error counts; one inside well-formed text does not.
    np.testing.assert_array_equal(error_token_counts(TASK, [PROBLEM] * 2, [["#", "x", ""], ["1", "", "2"]]), [2, 0])


def test_degenerate_fallback_reuses_the_repetition_check():
    assert degenerate_error_start(None, " ".join(["so"] * 12)) == 0
    assert degenerate_error_start(None, "a b c") == 5


def chain_config(out, **overrides):
    cfg = load_config_file("configs/qarl_chain.py")
    small = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
             "mesh.fsdp": 1, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2,
             "rl.samples_per_prompt": 4, "rl.max_new_tokens": 12, "rl.reuse_epochs": 1, "rl.dgg.window": 2,
             "rl.progress_bar": False, "eval.num_problems": 4, "eval.samples_per_prompt": 2, "eval.batch_size": 4,
             "eval.max_new_tokens": 12, "checkpoint.every": 0, "output_dir": str(out)}
    for key, value in {**small, **overrides}.items():
        apply_override(cfg, key, str(value))
    return cfg


@pytest.mark.slow
def test_error_token_rate_is_logged_per_step_and_at_eval_with_int4_rollouts(tmp_path):
    summary = run_rl(chain_config(tmp_path))
    records = summary["records"]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # A random-init policy almost never writes the first operand: nearly every token is an error.
        assert 0.5 < r["rollout/error_token_rate"] <= 1.0 and r["rollout/garbled_frac"] > 0.5
        assert "rollout/mismatch_abs_logp" in r and "accuracy" in r  # the existing metrics stay
    assert 0.5 < records[-1]["eval/error_token_rate"] <= 1.0


def test_aligned_learner_mismatch_is_far_smaller_at_int4_on_the_same_rollout(tmp_path):
    naive_cfg = chain_config(tmp_path / "naive", **{"rl.qarl": False, "model.hidden_size": 64, "model.head_dim": 16})
    aligned_cfg = chain_config(tmp_path / "aligned", **{"rl.qarl": True, "model.hidden_size": 64, "model.head_dim": 16})
    initial = initial_policy(naive_cfg, warm_up=False)
    naive_setup = setup_rl(naive_cfg, initial=initial)
    naive_batch, naive = collect_rollout_batch(naive_setup, naive_setup.state)
    aligned_setup = setup_rl(aligned_cfg, initial=initial)
    aligned_batch, aligned = collect_rollout_batch(aligned_setup, aligned_setup.state)
    np.testing.assert_array_equal(naive_batch.tokens, aligned_batch.tokens)  # one rollout, two learners
    np.testing.assert_array_equal(naive_batch.rollout_logprobs, aligned_batch.rollout_logprobs)
    assert aligned["rollout/mismatch_abs_logp"] < 1e-4
    assert naive["rollout/mismatch_abs_logp"] > 100 * aligned["rollout/mismatch_abs_logp"]
    assert naive["rollout/mismatch_abs_logp"] > 1e-3
