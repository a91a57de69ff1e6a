"""HCC proxy and editor (spec section 4), Skill1 / HeavySkill / Spec-o3 pieces (section 10), and the
HCC notebook."""

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_llm.analysis import hcc
from jaxrl_llm.analysis import short_methods as sm
from jaxrl_llm.envs.math_answer import extract_answer
from notebook_run import assert_stored_without_outputs, execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_hcc.ipynb"

SPEC_U = [1.2, 1.0, 0.6, 0.3, 0.5, 0.55, 0.5]
SPEC_G = [0.8, 0.7, 0.9, 0.95, 0.1, 0.05, 0.2]
SPEC_M = [0.24, 0.3, 0.06, 0.015, 0.45, 0.5225, 0.4]

TRACE = ("<think>\nWe need 12 + 7 - 4.\n\n12 + 7 = 19.\n\n19 - 4 = 15, so the answer is 15.\n\n"
         "Check: 15 + 4 = 19.\n\nWait, maybe re-read the problem.\n\nHmm, 12 + 7 again is 19.\n\n"
         "Let me double check 19 - 4.\n</think>\n\nThe answer is \\boxed{15}.")


# ----------------------------------------------------------------------------- HCC: spec values


def test_mismatch_spec_values():
    np.testing.assert_allclose(hcc.mismatch(SPEC_U, SPEC_G), SPEC_M, atol=1e-6)
    # negative progress is clipped: no progress at all, m = u
    np.testing.assert_allclose(hcc.mismatch([0.5], [-0.7]), [0.5], atol=1e-12)


def test_boundary_spec_values():
    m = hcc.mismatch(SPEC_U, SPEC_G)
    assert hcc.cut_boundary(m, 2, 0.3) == 3  # c = 2 fails on m_3 = .015, c = 3 passes
    assert m[3] < 0.3
    assert np.mean(m[4:]) == pytest.approx(0.4575, abs=1e-6)
    assert len(SPEC_M) - 1 - 3 == 3  # 3 of 7 steps removed


def test_terminal_progress_spec_values():
    g = hcc.terminal_progress([[1.0, 0.0]], [2.0, 0.0], start_hidden=[0.0, 0.0])
    np.testing.assert_allclose(g, [1.0], atol=1e-6)
    g = hcc.terminal_progress([[0.0, 1.0]], [2.0, 0.0], start_hidden=[0.0, 0.0])
    np.testing.assert_allclose(g, [0.0], atol=1e-6)


def test_terminal_progress_chains_previous_step_and_handles_zero_moves():
    hbar = [[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]  # step 2 does not move
    g = hcc.terminal_progress(hbar, [1.0, 2.0])
    # k=0 from the origin: cos((1,0),(1,2)) = 1/sqrt5; k=1: cos((0,1),(0,2)) = 1; k=2: zero move => 0
    np.testing.assert_allclose(g, [1 / np.sqrt(5), 1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="answer_hidden"):
        hcc.terminal_progress(hbar, [1.0, 2.0, 3.0])


def test_boundary_edge_cases():
    m = hcc.mismatch(SPEC_U, SPEC_G)
    assert hcc.cut_boundary(m, None) is None  # no answer step => no cut
    assert hcc.cut_boundary(m, 6) is None  # answer in the last step => nothing after it
    assert hcc.cut_boundary(m, 4, 0.3) == 4  # m_5 = .5225, mean(.5225, .4) = .46125
    assert hcc.cut_boundary(m, 2, 0.6) is None  # no suffix that uncertain
    with pytest.raises(ValueError, match="k_ans"):
        hcc.cut_boundary(m, 7)


# ----------------------------------------------------------------------------- HCC: text side


def test_split_trace_steps_spans_and_answer():
    split = hcc.split_trace(TRACE)
    assert len(split.steps) == 7
    assert split.steps[0] == "<think>\nWe need 12 + 7 - 4."
    assert split.steps[2] == "19 - 4 = 15, so the answer is 15."
    for step, (s, e) in zip(split.steps, split.spans):
        assert split.reasoning[s:e] == step
    assert split.answer_block == "\n\nThe answer is \\boxed{15}."
    assert split.final_answer == "15"
    open_trace = hcc.split_trace("a\n\n \n\nb")  # several blank lines, one separator; never closed
    assert open_trace.steps == ("a", "b") and open_trace.answer_block is None
    assert open_trace.final_answer is None


def test_answer_step_respects_number_boundaries():
    steps = ["112 apples", "12.5 pears", "x = \\boxed{12.0}"]
    assert hcc.answer_step(steps, "12") == 2  # boxed 12.0 equals 12; 112 and 12.5 are not 12
    assert hcc.answer_step(["total 1000 now"], "1,000") == 0  # normal form found
    assert hcc.answer_step(["nothing"], "12") is None
    assert hcc.answer_step(steps, None) is None
    assert hcc.answer_step(hcc.split_trace(TRACE).steps, "15") == 2


def test_step_ids_and_uncertainty():
    split = hcc.split_trace("ab cd\n\nef\n")
    assert split.spans == ((0, 5), (7, 9))
    tokens = [(0, 2), (2, 5), (5, 7), (7, 9), (9, 10)]  # "ab", " cd", "\n\n", "ef", "\n"
    ids = hcc.step_ids_from_offsets(tokens, split.spans)
    np.testing.assert_array_equal(ids, [0, 0, -1, 1, -1])
    u = hcc.step_uncertainty([1.0, 2.0, 9.0, 0.5, 9.0], ids, 2)
    np.testing.assert_allclose(u, [1.5, 0.5], atol=1e-12)
    hidden = np.arange(10.0).reshape(5, 2)
    np.testing.assert_allclose(hcc.step_means(hidden, ids, 2), [[1.0, 2.0], [6.0, 7.0]], atol=1e-12)
    with pytest.raises(ValueError, match="own no token"):
        hcc.step_uncertainty([1.0, 2.0], [0, 0], 2)
    with pytest.raises(ValueError, match="share T"):
        hcc.step_uncertainty([1.0, 2.0], [0], 1)


def test_hcc_cut_end_to_end_on_spec_values():
    edit, m, k_ans = hcc.hcc_cut(TRACE, SPEC_U, SPEC_G, tau=0.3)
    np.testing.assert_allclose(m, SPEC_M, atol=1e-6)
    assert k_ans == 2 and edit.boundary == 3 and edit.removed_steps == 3
    assert edit.text == ("<think>\nWe need 12 + 7 - 4.\n\n12 + 7 = 19.\n\n19 - 4 = 15, so the answer is 15.\n\n"
                         "Check: 15 + 4 = 19.\n</think>\n\nThe answer is \\boxed{15}.")
    assert extract_answer(edit.text) == extract_answer(TRACE) == "15"


def test_hcc_cut_no_cut_cases():
    no_answer = TRACE.replace("\\boxed{15}", "unknown").replace("15", "fifteen")
    edit, _, k_ans = hcc.hcc_cut(no_answer, SPEC_U, SPEC_G)
    assert k_ans is None and edit.boundary is None and edit.text == no_answer
    last_only = "<think>\na\n\nb\n\nso 15\n</think>\n\\boxed{15}"
    edit, _, k_ans = hcc.hcc_cut(last_only, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert k_ans == 2 and edit.boundary is None and edit.text == last_only
    with pytest.raises(ValueError, match="K = 3"):
        hcc.hcc_cut(last_only, [1.0, 1.0], [0.0, 0.0])


def test_hcc_edit_rejects_bad_boundaries():
    with pytest.raises(ValueError, match="no `</think>`"):
        hcc.hcc_edit("a\n\nb", 0)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        hcc.hcc_edit(TRACE, 7)
    assert hcc.hcc_edit(TRACE, None).text == TRACE
    assert hcc.hcc_edit(TRACE, 6).text == TRACE  # keeping every step is the identity


_STEP = st.text(alphabet="abc xyz0123456789=+.", min_size=1, max_size=12).filter(lambda s: s.strip())


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=8),
       seps=st.lists(st.sampled_from(["\n\n", "\n \n", "\n\n\n"]), min_size=8, max_size=8),
       tail=st.sampled_from(["", "\n", " \n"]), answer=st.sampled_from(["\n\\boxed{7}", " 42", "\nx = 3/4."]),
       data=st.data())
def test_editor_invariants(steps, seps, tail, answer, data):
    reasoning = "".join(s + sep for s, sep in zip(steps[:-1], seps)) + steps[-1] + tail
    trace = reasoning + "</think>" + answer
    split = hcc.split_trace(trace)
    b = data.draw(st.integers(0, len(split.steps) - 1))
    edit = hcc.hcc_edit(trace, b)
    assert reasoning.startswith(edit.kept_reasoning)
    assert edit.text.endswith("</think>" + answer) and edit.answer_block == answer
    assert edit.text == edit.kept_reasoning + edit.tail + "</think>" + answer
    assert hcc.split_trace(edit.text).steps == split.steps[: b + 1]
    assert extract_answer(edit.text) == extract_answer(trace)
    assert edit.removed_steps == len(split.steps) - 1 - b
    assert len(edit.text) <= len(trace)


def test_fit_tau_picks_best_agreement():
    m = hcc.mismatch(SPEC_U, SPEC_G)
    # editor says b* = 3: taus up to .45 agree (0.45: c = 3 passes with m_4 = .45, suffix .4575)
    assert hcc.fit_tau([m], [2], [3]) == pytest.approx(0.05)
    assert hcc.fit_tau([m, m], [2, 2], [3, None], candidates=[0.3, 0.5, 0.6]) == pytest.approx(0.3)
    # b* = None: the smallest tau above every qualifying suffix (c = 4 needs .46125) agrees
    assert hcc.fit_tau([m], [2], [None], candidates=[0.3, 0.5, 0.6]) == pytest.approx(0.5)
    assert hcc.fit_tau([], [], []) == hcc.TAU_FALLBACK == 0.3
    # The first fit lands on the default grid's smallest tau (0.05), the second on [0.3, 0.5, 0.6]'s 0.5.
    assert hcc.tau_at_grid_edge(hcc.fit_tau([m], [2], [3])) and hcc.TAU_GRID[0] == 0.05
    assert not hcc.tau_at_grid_edge(0.5, [0.3, 0.5, 0.6]) and hcc.tau_at_grid_edge(0.3, [0.3, 0.5, 0.6])
    with pytest.raises(ValueError, match="one entry per trace"):
        hcc.fit_tau([m], [], [3])


# ----------------------------------------------------------------------------- Skill1


def test_skill1_spec_values():
    assert sm.skill_utility_update(0.7, 1) == pytest.approx(0.715, abs=1e-6)
    assert sm.skill_utility_update(0.7, 0) == pytest.approx(0.665, abs=1e-6)
    np.testing.assert_allclose(sm.skill_utility_update([0.7, 0.2], [1, 0]), [0.715, 0.19], atol=1e-12)
    u = [0.7, 0.4, 0.2]
    assert sm.distillation_credit(1.0, u) == pytest.approx(0.3, abs=1e-6)
    assert sm.distillation_credit(0.0, u) == pytest.approx(-0.7, abs=1e-6)
    assert sm.selection_credit(u, 0) == pytest.approx(0.7 - 1.3 / 3, abs=1e-12)
    rewards = sm.skill1_segment_rewards(1.0, sm.selection_credit(u, 0), sm.distillation_credit(1.0, u))
    assert rewards.execute == 1.0
    assert rewards.select == pytest.approx(1.0 + 0.3 * (0.7 - 1.3 / 3), abs=1e-12)
    assert rewards.distill == pytest.approx(1.09, abs=1e-12)
    with pytest.raises(ValueError, match="selected"):
        sm.selection_credit(u, 3)
    with pytest.raises(ValueError, match="rate"):
        sm.skill_utility_update(0.7, 1, rate=0.0)


# ----------------------------------------------------------------------------- HeavySkill


def test_heavyskill_spec_values():
    answers = ["12", "15", "12", "7"]
    result = sm.heavyskill_aggregate(answers, answers, "15")
    assert result.answer == "12" and result.correct is False and result.pass_at_k == 1.0
    np.testing.assert_allclose(sm.deliberation_advantages([1, 0, 1, 1]), [0.5, -1.5, 0.5, 0.5], atol=1e-6)
    assert sm.majority_answer_normalized(["12.0", "7", "12", None]) == "12.0"  # 12.0 and 12 agree
    assert sm.majority_answer_normalized(["7", "8"]) == "7"  # tie: first seen
    assert sm.majority_answer_normalized([None]) is None
    assert sm.any_correct(["1", None], "2") == 0.0


def test_heavyskill_budget_and_trim():
    assert sm.heavyskill_solution_budget(32768, 1000, 2048, 8) == (32768 - 1000 - 2048) // 8 == 3715
    assert sm.trim_to_tail(list(range(10)), 3) == [7, 8, 9]
    assert sm.trim_to_tail([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError, match="no room"):
        sm.heavyskill_solution_budget(100, 90, 20, 8)


# ----------------------------------------------------------------------------- Spec-o3


@pytest.mark.parametrize("response,truth,reward", [
    ("zoom done. <answer>\\boxed{B}</answer>", "B", 1.0),  # correct + ok
    ("<answer>\\boxed{B}</answer> <answer>\\boxed{B}</answer>", "B", 0.8),  # correct + two tags
    ("the class is \\boxed{B}", "B", 0.8),  # correct + no tag
    ("<answer>\\boxed{A}</answer>", "B", 0.0),  # wrong + ok
    ("<answer>A</answer>", "B", -0.2),  # wrong + no box
    ("<answer>\\boxed{A}", "B", -0.2),  # wrong + unclosed tag
])
def test_speco3_spec_values(response, truth, reward):
    assert sm.speco3_reward(response, truth).reward == pytest.approx(reward, abs=1e-6)


def test_speco3_breakdown():
    r = sm.speco3_reward("<answer>\\boxed{B}</answer><answer>", "B")
    assert (r.acc, r.format, r.answer) == (1.0, -1.0, "B")


# ----------------------------------------------------------------------------- notebook


def test_hcc_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_hcc_notebook_executes(tmp_path, monkeypatch):
    nb, text, has_png = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=120)
    assert "k_ans = 2" in text and "boundary b = 3" in text and "removed 3 of 7 steps" in text
    assert "answer unchanged: True" in text
    assert has_png
