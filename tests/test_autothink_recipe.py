"""AutoThink recipe: the easy/hard ellipsis-prompt task, the `autothink` scorer in the RL step (the
spec's AT1-AT3 values through the scorer) and a reduced CLI run whose no-think rate on easy problems
rises while its accuracy does."""

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs import ArithmeticTask, build_task
from jaxrl_llm.envs.autothink_mix import (
    ELLIPSIS_PROMPT,
    AutoThinkMixTask,
    no_think_response,
    think_facts,
    think_response,
)
from jaxrl_llm.envs.autothink_reward import check_options, mode_metrics, stage_at
from jaxrl_llm.envs.rewards import get_scorer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.train.rl import check_rl_config
from jaxrl_llm.train.rl_rollout import score_with_metrics


def chain_problem(prompt: str, reference: str, steps: tuple[str, ...], difficulty: str = "hard") -> Problem:
    return Problem(prompt=prompt + ELLIPSIS_PROMPT, reference=reference,
                   metadata={"steps": steps, "difficulty": difficulty, "sft_no_think": False})


EASY = chain_problem("3+5=", "8", ("3+5=8",), "easy")
HARD = chain_problem("12+7-30=", "-11", ("12+7=19", "19-30=-11"))


# --- the task -------------------------------------------------------------------------------------

def test_modes_are_written_as_the_spec_says():
    assert think_response(HARD) == "12+7=19;19-30=-11\n</think>\n\n-11"
    assert no_think_response(HARD) == "</think>\n\n-11"
    assert HARD.prompt == "12+7-30=<think>\n...\n"


@pytest.mark.parametrize("response, facts", [
    ("3+5=8\n</think>\n\n8", (True, False, True)),      # think, correct
    ("3+5=9\n</think>\n\n9", (False, False, True)),     # think, wrong
    ("</think>\n\n8", (True, True, True)),              # no-think, correct
    ("</think>\n\n 8 ", (True, True, True)),            # spaces around the answer are allowed
    ("</think>\n\n7", (False, True, True)),             # no-think, wrong
    ("</think>\n\n8x", (False, True, True)),            # junk after the answer: wrong, not a format error
    ("3+5=8;8", (False, False, False)),                 # never closed: format error
    ("3+5=8\n</think>\n\n", (False, False, False)),     # nothing after </think>: format error
])
def test_think_facts_hand_cases(response, facts):
    assert tuple(think_facts(EASY, response)) == facts
    assert AutoThinkMixTask().score(EASY, response) == float(facts[0])


def test_difficulty_knobs_shape_the_problems():
    task = AutoThinkMixTask(easy_operands=2, easy_digits=1, hard_operands=(4, 5), hard_digits=2)
    problems = task.sample_batch(300, seed=0)
    for p in problems:
        assert p.prompt.endswith(ELLIPSIS_PROMPT)
        operands = p.metadata["operands"]
        if p.metadata["difficulty"] == "easy":
            assert len(operands) == 2 and max(operands) <= 9
        else:
            assert p.metadata["difficulty"] == "hard" and len(operands) in (4, 5) and max(operands) <= 99
        assert task.score(p, think_response(p)) == 1.0 and task.score(p, no_think_response(p)) == 1.0
    share = np.mean([p.metadata["difficulty"] == "easy" for p in problems])
    assert 0.4 < share < 0.6
    assert {p.metadata["difficulty"] for p in AutoThinkMixTask(easy_fraction=1.0).sample_batch(50, 0)} == {"easy"}
    assert {p.metadata["difficulty"] for p in AutoThinkMixTask(easy_fraction=0.0).sample_batch(50, 0)} == {"hard"}


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_warm_up_targets_mix_both_modes_in_every_difficulty(fraction):
    task = AutoThinkMixTask(sft_no_think_fraction=fraction)
    problems = task.sample_batch(600, seed=1)
    for difficulty in ("easy", "hard"):
        rows = [p for p in problems if p.metadata["difficulty"] == difficulty]
        no_think = np.mean([think_facts(p, task.sft_target(p)).no_think for p in rows])
        assert abs(no_think - fraction) < 0.08
        assert all(task.score(p, task.sft_target(p)) == 1.0 for p in rows)


def test_the_char_tokenizer_reads_prompt_and_targets():
    tok = CharTokenizer()
    task = AutoThinkMixTask()
    for p in task.sample_batch(20, seed=2):
        text = p.prompt + task.sft_target(p)
        assert tok.decode(tok.encode(text)) == text


def test_registered_and_built_from_data_task_kwargs():
    task = build_task({"task": "autothink_mix", "task_kwargs": {"hard_operands": 3, "hard_digits": 1},
                       "eval_fraction": 0.2})
    assert isinstance(task, AutoThinkMixTask) and task.eval_fraction == 0.2
    hard = [p for p in task.sample_batch(40, 0) if p.metadata["difficulty"] == "hard"]
    assert hard and all(len(p.metadata["operands"]) == 3 for p in hard)
    with pytest.raises(ValueError, match="easy_fraction"):
        AutoThinkMixTask(easy_fraction=1.5)


# --- the reward in the loop -----------------------------------------------------------------------

def score(responses, lengths, *, options, samples_per_prompt, problems=(EASY,), task=None):
    """The RL step's scoring call (`rl_step.sample_round`) with rl.scorers = ('autothink',)."""
    lengths = np.asarray(lengths, np.int32)
    return score_with_metrics(("autothink",), task or AutoThinkMixTask(), list(problems), responses,
                              samples_per_prompt, lengths=lengths, finished=np.ones(len(responses), bool),
                              max_length=64, step=0, options={"autothink": options})


THINK_OK, THINK_BAD, FREE_OK, FREE_BAD = ("3+5=8\n</think>\n\n8", "3+5=9\n</think>\n\n9", "</think>\n\n8",
                                          "</think>\n\n7")


def test_at1_stage_one_balances_an_overthinking_batch():
    rewards, metrics = score([THINK_OK, THINK_OK, THINK_BAD, FREE_OK], [5, 5, 5, 1], options={"stage": 1},
                             samples_per_prompt=4)
    # p = 0.75 -> lambda = 0.5: think-correct 1 -> 0.5, think-wrong 0 -> -0.5, no-think stays 2.
    np.testing.assert_allclose(rewards, [0.5, 0.5, -0.5, 2.0], atol=1e-6)
    assert metrics["autothink/balance_lambda"] == pytest.approx(0.5)
    assert metrics["autothink/think_rate"] == pytest.approx(0.75)
    assert metrics["autothink/stage"] == 1.0


def test_stage_one_pulls_an_over_represented_no_think_mode_too():
    rewards, metrics = score([FREE_OK, FREE_OK, FREE_BAD, THINK_OK], [1, 1, 1, 5], options={"stage": 1},
                             samples_per_prompt=4)
    # no-think rate 0.75 -> lambda 0.5: 2 -> (2 + 1) / 2, -1 -> (-1 - 2) / 2; think unchanged.
    np.testing.assert_allclose(rewards, [1.5, 1.5, -1.5, 1.0], atol=1e-6)
    assert metrics["autothink/balance_lambda"] == pytest.approx(0.5)


def test_stage_two_is_the_base_reward():
    rewards, metrics = score([THINK_OK, THINK_BAD, FREE_OK, FREE_BAD, "3+5=8"], [5, 5, 1, 1, 5],
                             options={"stage": 2}, samples_per_prompt=5)
    np.testing.assert_allclose(rewards, [1.0, 0.0, 2.0, -1.0, 0.0])
    assert metrics["autothink/balance_lambda"] == 0.0
    assert metrics["autothink/format_errors"] == pytest.approx(0.2)


def test_at2_stage_three_length_terms_per_group_and_correctness():
    responses = [THINK_OK] * 3 + [THINK_BAD] * 3
    rewards, _ = score(responses, [100, 200, 300] * 2, options={"stage": 3}, samples_per_prompt=6)
    np.testing.assert_allclose(rewards - np.array([1, 1, 1, 0, 0, 0]),
                               [0.051271, 0.0, -0.048771, -0.051271, 0.0, 0.048771], atol=1e-5)


def test_stage_three_keeps_groups_apart():
    # Two prompts, three correct samples each; the second group's lengths are its own.
    rewards, _ = score([THINK_OK] * 6, [100, 200, 300, 10, 10, 10], options={"stage": 3}, samples_per_prompt=3,
                       problems=(EASY, EASY))
    np.testing.assert_allclose(rewards, [1.051271, 1.0, 0.951229, 1.0, 1.0, 1.0], atol=1e-5)


def test_at3_degenerate_negatives_become_minus_two():
    # A task without think_facts: correctness from its score, format = an answer after </think>.
    task = ArithmeticTask(level=0)
    problem = Problem(prompt="3+5=", reference="8", metadata={})
    loop = "a b " * 12
    rewards, metrics = score(["</think>\n\n" + loop, loop + "\n</think>\n\n" + loop], [30, 30], options={"stage": 2},
                             samples_per_prompt=2, problems=(problem,), task=task)
    np.testing.assert_allclose(rewards, [-2.0, 0.0])
    assert metrics["autothink/degenerate"] == 1.0


def test_mode_metrics_per_difficulty_hand_case():
    problems = [EASY, EASY, HARD, HARD]
    m = mode_metrics(problems, correct=[True, False, True, True], no_think=[True, True, False, True],
                     lengths=[2, 4, 30, 3])
    assert m["think_rate"] == 0.25 and m["think_rate/easy"] == 0.0 and m["think_rate/hard"] == 0.5
    assert m["accuracy/easy"] == 0.5 and m["accuracy/hard"] == 1.0 and m["accuracy/no_think"] == pytest.approx(2 / 3)
    assert m["length/easy"] == 3.0 and m["length/hard"] == 16.5


def test_the_scorer_is_registered_and_existing_scorers_are_untouched():
    rewards, metrics = score_with_metrics(("task", "eos"), AutoThinkMixTask(), [EASY], [FREE_OK, "3+5"], 2,
                                          lengths=np.array([3, 3]), finished=np.array([True, False]),
                                          max_length=8)
    np.testing.assert_array_equal(rewards, [[1.0, 1.0], [0.0, 0.0]])
    assert metrics == {}
    assert callable(get_scorer("autothink"))


# --- the stage schedule and its checks ------------------------------------------------------------

def test_stage_schedule():
    assert [stage_at(s, stage=0, stage_ends=(10, 20)) for s in (0, 9, 10, 19, 20, 99)] == [1, 1, 2, 2, 3, 3]
    assert [stage_at(s, stage=0, stage_ends=(5,)) for s in (4, 5, 50)] == [1, 2, 2]
    assert stage_at(15, stage=3, stage_ends=(10, 20)) == 3


@pytest.mark.parametrize("options, field", [
    ({"stage": 4}, "rl.autothink.stage"),
    ({"stage": 0, "stage_ends": ()}, "rl.autothink.stage=0"),
    ({"stage": 0, "stage_ends": (20, 10)}, "rl.autothink.stage_ends"),
    ({"balance_rate": 0.0}, "rl.autothink.balance_rate"),
    ({"alpha": -1.0}, "rl.autothink.alpha"),
    ({"stages": 1}, "rl.autothink.stages"),
])
def test_bad_settings_fail_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_options(options)


def test_the_recipe_config_is_checked_before_anything_compiles():
    cfg = cli.load_config_file("configs/autothink.py")
    check_rl_config(cfg)
    cli.apply_override(cfg, "rl.autothink.stage", "5")
    with pytest.raises(ValueError, match=r"rl\.autothink\.stage"):
        check_rl_config(cfg)


# --- a reduced CLI run ----------------------------------------------------------------------------

# The recipe's model and prompt, easy problems only (2 one-digit operands), a 200-step warm-up in both
# modes and 6 RL steps: stage 1 on step 0, stage 2 (no-think correct +2 / wrong -1, think +1 / 0) after.
# Where no-think answers are right about as often as think answers, no-think pays more, so its rate must
# rise. Measured, seeds 0 / 1 / 2 (train rollouts, mean of steps 1-2 -> 5-6): think rate 0.54 -> 0.14,
# 0.46 -> 0.11, 0.52 -> 0.13; accuracy 0.38 -> 0.60, 0.45 -> 0.72, 0.43 -> 0.79.
REDUCED = {"mesh.fsdp": 1, "data.task_kwargs.easy_fraction": 1.0, "sft.train.steps": 200,
           "sft.optimizer.decay_steps": 200, "sft.train.progress_bar": False, "rl.steps": 6,
           "rl.prompts_per_step": 16, "rl.samples_per_prompt": 8, "rl.autothink.stage_ends": "(1, 100)",
           "rl.max_new_tokens": 16, "rl.progress_bar": False, "eval.num_problems": 0, "checkpoint.every": 0}


@pytest.mark.slow  # a 200-step warm-up and six RL steps: about 70 s alone, minutes on a loaded machine
def test_reduced_run_raises_the_no_think_rate_on_easy_problems(tmp_path):
    args = ["rl", "--config", "configs/autothink.py", f"--config.output_dir={tmp_path}"]
    assert cli.main(args + [f"--config.{k}={v}" for k, v in REDUCED.items()]) == 0
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [r for r in map(json.loads, f) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert [r["autothink/stage"] for r in steps] == [1.0] + [2.0] * 5  # stage_ends=(1, 100)
    for r in steps:
        for key in ("think_rate", "think_rate/easy", "accuracy/easy", "length/easy", "balance_lambda"):
            assert 0.0 <= r[f"autothink/{key}"] <= (16.0 if key.startswith("length") else 1.0), key
        assert np.isfinite(r["loss"])

    def early_late(key):
        values = [r[f"autothink/{key}"] for r in steps]
        return np.mean(values[:2]), np.mean(values[-2:])

    think_before, think_after = early_late("think_rate/easy")
    acc_before, acc_after = early_late("accuracy/easy")
    print("think rate on easy", think_before, "->", think_after, "accuracy", acc_before, "->", acc_after)
    assert think_after < think_before - 0.2  # the no-think rate on easy problems rises
    assert acc_after > acc_before + 0.1  # and the policy learns the task, not only the mode


# --- the experiment's table -----------------------------------------------------------------------

_spec = importlib.util.spec_from_file_location("exp_autothink", os.path.join("tools", "exp_autothink.py"))
exp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exp)


def test_the_experiment_table_reports_no_think_rates_over_seeds():
    runs = [{"variant": "autothink", "seed": s, "accuracy/easy": a, "think_rate/easy": t, "length/easy": n}
            for s, a, t, n in ((0, 0.8, 0.2, 5.0), (1, 0.6, 0.4, 7.0))]
    (row,) = exp.summarize(runs + [{"variant": "other", "seed": 0, "accuracy": 1.0}])
    assert row["seeds"] == 2 and row["accuracy/easy"] == pytest.approx((0.7, 0.1))
    table = exp.markdown_table([row])
    # columns: acc easy / hard / all, length easy / hard, no-think easy (1 - 0.3) / hard
    assert table.splitlines()[-1] == ("| autothink | 2 | 0.700 +- 0.100 | nan +- nan | nan +- nan | 6.0 +- 1.0 | "
                                      "nan +- nan | 0.700 +- 0.100 | nan +- nan |")
