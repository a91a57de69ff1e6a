"""LANG end to end: the multilingual number-word task, its language identifier, hint lengths through the
prompt hook (L1), the per-group switch in the loop state (L2), the conjunctive reward (L3), a CLI run."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.envs.lang_arith import (
    LangArithTask,
    identify_language,
    language_consistent,
    language_group,
    number_text,
    parse_number,
)
from jaxrl_llm.envs.rewards import get_scorer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.objectives.lang import LangSwitchState, lang_reward
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.rl import check_rl_config, setup_rl
from jaxrl_llm.train.rl_hints import (
    GROUPS,
    hint_fractions,
    hinted_problems,
    problem_groups,
    switch_from_metrics,
    switch_metrics,
    switch_step,
)

TASK = LangArithTask()


def problem(lang, a, op, b, prompt=None):
    """A hand-built problem `a op b` in `lang` with the task's own trace and metadata."""
    c = a + b if op == "+" else a - b
    words = TASK.trace_words(a, op, b, lang)
    return Problem(prompt or "q?", number_text(c, lang),
                   {"language": lang, "group": language_group(lang), "value": c, "hint": words,
                    "english_trace": TASK.trace_words(a, op, b, "en")})


# ---- the task -----------------------------------------------------------------------------------------------

def test_a_swahili_problem_reads_and_scores_by_hand():
    p = problem("sw", 11, "+", 4)  # kumi na moja ongeza nne ni kumi na tano
    assert p.metadata["hint"] == ("kumi", "na", "moja", "ongeza", "nne", "ni", "kumi", "na", "tano")
    assert TASK.reward_components(p, "kumi na moja ongeza nne ni kumi na tano; #kumi na tano") == \
        {"lc": 1.0, "format": 1.0, "acc": 1.0}
    # The English drift: right answer, wrong language.
    assert TASK.reward_components(p, "eleven plus four is fifteen; #fifteen") == {"lc": 0.0, "format": 1.0, "acc": 1.0}
    assert TASK.reward_components(p, "kumi na tano; #kumi na tano #tano")["format"] == 0.0  # two answers
    assert TASK.reward_components(p, "ni; #kumi na tano kumi")["acc"] == 0.0  # not one whole number
    assert TASK.reward_components(p, "#15") == {"lc": 0.0, "format": 1.0, "acc": 1.0}  # digits: right, no language
    assert parse_number("kumi na") is None and parse_number(" muoi  lam ") == 15 and parse_number("dix-sept") == 17


def test_drawn_problems_are_unambiguous_and_their_worked_solution_scores_one():
    problems = TASK.sample_batch(300, seed=3)
    assert {p.metadata["language"] for p in problems} == {"en", "de", "fr", "es", "vi", "sw", "id"}
    assert {p.metadata["group"] for p in problems} == {"high", "mid", "low"}
    for p in problems:
        assert identify_language(p.prompt) == p.metadata["language"]
        assert TASK.score(p, TASK.worked_solution(p)) == 1.0
        assert 0 <= p.metadata["value"] <= 20 and parse_number(p.reference) == p.metadata["value"]
    hand = next(p for p in problems if p.metadata["language"] == "id")
    assert TASK.worked_solution(hand) == " ".join(hand.metadata["hint"]) + "; #" + hand.reference


def test_the_warm_up_drifts_into_english_only_for_the_configured_share():
    problems = TASK.sample_batch(2000, seed=0)
    english = {g: np.mean([TASK.sft_target(p) != TASK.worked_solution(p) for p in problems
                           if p.metadata["group"] == g]) for g in GROUPS}
    assert english["high"] == 0.0
    assert abs(english["mid"] - 0.3) < 0.06 and abs(english["low"] - 0.7) < 0.06
    for p in problems[:50]:  # a drifted target is still a correct answer
        assert TASK.reward_components(p, TASK.sft_target(p))["acc"] == 1.0


def test_bad_task_arguments_name_the_field():
    with pytest.raises(ValueError, match="languages must be a non-empty subset"):
        LangArithTask(languages=("en", "xx"))
    with pytest.raises(ValueError, match="sft_english_share must be 3 shares"):
        LangArithTask(sft_english_share=(0.1, 0.2))


# ---- the identifier -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, lang", [
    ("three plus four is seven; #seven", "en"),
    ("drei plus vier ist sieben; #sieben", "de"),
    ("trois plus quatre egale sept; #sept", "fr"),
    ("tres mas cuatro es siete; #siete", "es"),
    ("ba cong bon bang bay; #bay", "vi"),  # py3langid says "id" here
    ("tatu ongeza nne ni saba; #saba", "sw"),
    ("tiga tambah empat adalah tujuh; #tujuh", "id"),
    ("#sept", "fr"),  # one answer word is enough
    ("six plus six", None),  # English or French: a tie
    ("hello world", None),
])
def test_the_identifier_on_hand_texts(text, lang):
    assert identify_language(text) == lang


def test_consistency_needs_every_word_in_the_language():
    assert language_consistent("drei plus vier ist sieben; #sieben", "de")  # "plus" is shared, allowed
    assert not language_consistent("drei plus vier is seven; #seven", "de")
    assert not language_consistent("; #", "de")  # no word at all
    assert not language_consistent("drei plus 4 ist sieben", "de")  # digits are no language


# ---- L3: the conjunctive reward -----------------------------------------------------------------------------

def test_l3_a_wrong_answer_in_language_and_format_scores_zero():
    p = problem("de", 3, "+", 4)
    c = TASK.reward_components(p, "drei plus vier ist acht; #acht")
    assert c == {"lc": 1.0, "format": 1.0, "acc": 0.0} and TASK.score(p, "drei plus vier ist acht; #acht") == 0.0
    np.testing.assert_array_equal(lang_reward(jnp.array([1, 1, 1]), jnp.array([1, 1, 0]), jnp.array([0, 1, 1])),
                                  [0.0, 1.0, 0.0])
    # The mGRPO scorer keeps accuracy alone: the English answer earns it.
    acc = get_scorer("lang_acc")(TASK, [p, p], ["three plus four is seven; #seven", "#acht"], lengths=None,
                                 finished=None, max_length=0)
    np.testing.assert_array_equal(acc, [1.0, 0.0])


# ---- L1: hint lengths through the prompt hook ---------------------------------------------------------------

@pytest.mark.parametrize("step, k", [(0, 40), (25, 34), (50, 20), (100, 0)])
def test_l1_hint_lengths_through_the_prompt_hook(step, k):
    words = tuple(f"w{i}" for i in range(40))
    p = Problem("q?", "", {"language": "id", "group": "low", "value": 0, "hint": words})
    fractions = hint_fractions(step, 100, problem_groups([p]), np.zeros(3, bool))
    (hinted,) = hinted_problems(TASK, [p], fractions)
    assert hinted.prompt.startswith("q?")
    assert hinted.prompt[2:].split() == list(words[:k])
    assert hinted.metadata["hint_fraction"] == fractions[0] and hinted.reference == p.reference
    if step == 25:
        assert fractions[0] == pytest.approx(0.853553, abs=1e-6)


def test_a_switched_off_group_gets_no_hint_and_the_prompt_continues_into_the_solution():
    p = problem("id", 3, "+", 4, prompt="tiga tambah empat?")
    (off,) = hinted_problems(TASK, [p], hint_fractions(0, 10, problem_groups([p]), np.array([False, False, True])))
    assert off.prompt == "tiga tambah empat?"
    (half,) = hinted_problems(TASK, [p], np.array([0.5]))  # L = 5 -> 2 words, then the space the solution has
    assert half.prompt == "tiga tambah empat?tiga tambah "
    assert (half.prompt + "empat adalah tujuh; #tujuh") == p.prompt + TASK.worked_solution(p)
    assert TASK.hinted_prompt(p, 1.0) + "; #tujuh" == p.prompt + TASK.worked_solution(p)


# ---- L2: the switch in the loop state -----------------------------------------------------------------------

def test_l2_the_switch_fires_at_0602_and_stays_off():
    # Five high prompts, four of them with a positive-advantage rollout: u_high = 0.8.
    problems = [problem("en", 1, "+", 1)] * 5 + [problem("sw", 1, "+", 1)] * 2
    groups = problem_groups(problems)
    group_ids = np.repeat(np.arange(7), 2)
    advantages = np.array([1, -1] * 4 + [0, 0] + [-1, 1] + [0, 0], np.float32)
    before = LangSwitchState(jnp.array([0.58, 0.0, 0.0]), jnp.zeros(3, bool))
    after, u, present = switch_step(before, advantages, group_ids, groups, alpha=0.9, tau=0.6)
    np.testing.assert_allclose(u, [0.8, 0.0, 0.5])
    np.testing.assert_array_equal(present, [True, False, True])
    np.testing.assert_allclose(after.usefulness_ema, [0.602, 0.0, 0.05], atol=1e-6)
    np.testing.assert_array_equal(after.hint_off, [True, False, False])
    # The loop carries the state through the step's record; next step the high group has no hint.
    record = switch_metrics(np.full(7, 0.9), groups, after, u, present)
    assert record["hints/off/high"] == 1.0 and record["hints/ema/high"] == pytest.approx(0.602)
    carried = switch_from_metrics(record)
    np.testing.assert_array_equal(carried.usefulness_ema, after.usefulness_ema)
    np.testing.assert_array_equal(hint_fractions(10, 100, groups, carried.hint_off)[[0, 5]],
                                  [0.0, 0.5 * (1 + np.cos(np.pi * 0.1))])
    # Irreversible: a useless step drops the EMA below tau, the group stays off.
    later, _, _ = switch_step(carried, np.zeros(14, np.float32), group_ids, groups, alpha=0.9, tau=0.6)
    assert float(later.usefulness_ema[0]) < 0.6 and bool(later.hint_off[0])


def test_hints_need_a_task_with_hinted_prompts_and_valid_fields():
    cfg = cli.load_config_file("configs/quickstart.py")
    cli.apply_override(cfg, "rl.hints.enabled", "true")
    with pytest.raises(ValueError, match="hinted_prompt"):
        check_rl_config(cfg)
    cfg = cli.load_config_file("configs/lang.py")
    check_rl_config(cfg)
    cli.apply_override(cfg, "rl.hints.tau", "0")
    with pytest.raises(ValueError, match=r"rl.hints.tau must be in \(0, 1\]"):
        check_rl_config(cfg)


# ---- a reduced CLI run --------------------------------------------------------------------------------------

TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "sft.train.steps": 2, "sft.train.batch_size": 8, "sft.train.progress_bar": False,
        "data.num_train": 32, "rl.steps": 2, "rl.prompts_per_step": 7, "rl.samples_per_prompt": 2,
        "rl.max_new_tokens": 6, "rl.reuse_epochs": 1, "rl.progress_bar": False, "rl.dgg.window": 2,
        "eval.num_problems": 7, "eval.samples_per_prompt": 2, "eval.batch_size": 7, "eval.max_new_tokens": 6,
        # alpha 0, tau tiny: a group fires as soon as one of its prompts has a positive-advantage rollout.
        "rl.hints.alpha": 0.0, "rl.hints.tau": 1e-6, "rl.objective_kwargs.entropy_coef": 0.01}


@pytest.mark.slow
def test_a_reduced_cli_run_logs_per_group_metrics_and_carries_the_switch(tmp_path):
    args = ["rl", "--config", "configs/lang.py", f"--config.output_dir={tmp_path}"]
    args += [f"--config.{k}={v}" for k, v in TINY.items()]
    assert cli.main(args) == 0
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    steps = [r for r in lines if "hints/ema/high" in r]
    assert [r["step"] for r in steps] == [1, 2]
    first, second = steps
    assert first["hints/fraction/high"] == 1.0  # p_0 = 1 for every group at step 0
    present = [g for g in GROUPS if f"lang/{g}/lc" in first]
    assert len(present) >= 2 and all(f"hints/fraction/{g}" in first for g in present)
    for g in (*present, "all"):
        for k in ("lc", "format", "acc", "lc_acc"):
            assert 0.0 <= first[f"lang/{g}/{k}"] <= 1.0
    for k in ("lc", "format", "acc", "lc_acc"):
        assert f"eval/lang/all/{k}" in lines[-1] and f"eval/greedy/lang/all/{k}" in lines[-1]
    assert lines[-1]["eval/accuracy"] <= lines[-1]["eval/lang/all/lc_acc"]  # R = lc * format * acc <= lc * acc
    for g in GROUPS:
        if f"hints/fraction/{g}" in second:  # a group switched off after step 1 has no hint at step 2
            expected = 0.0 if first[f"hints/off/{g}"] else 0.5
            assert second[f"hints/fraction/{g}"] == pytest.approx(expected)
        assert second[f"hints/off/{g}"] >= first[f"hints/off/{g}"]  # never switched back on
        assert first[f"hints/off/{g}"] == float(first.get(f"hints/usefulness/{g}", 0.0) > 0)
    # The switch is part of the checkpointed state: the final checkpoint holds step 2's values.
    cfg = cli.load_config_file("configs/lang.py")
    for key, value in {**TINY, "output_dir": str(tmp_path)}.items():
        cli.apply_override(cfg, key, str(value))
    saved = Checkpointer(str(tmp_path / "checkpoints")).restore(setup_rl(cfg, warm_up=False).state)
    np.testing.assert_array_equal(np.asarray(saved.extras["hint_ema"]),
                                  np.float32([second[f"hints/ema/{g}"] for g in GROUPS]))
    np.testing.assert_array_equal(np.asarray(saved.extras["hint_off"]), [second[f"hints/off/{g}"] > 0 for g in GROUPS])
