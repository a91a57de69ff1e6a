"""ArithChain traces with ground truth (spec section 0 item 4): errors, propagation, self-correction,
continuation, labels (section 5), editor boundary (section 4) and the JSONL export."""

import json

import numpy as np
import pytest

from jaxrl_llm.analysis import hcc, prm
from jaxrl_llm.envs.arith_chain import ArithChainTask, chain_steps, parse_steps
from jaxrl_llm.envs.arith_chain_traces import (RECHECK, chain_prompt, editor_edit, export_traces_jsonl, make_trace,
                                               read_traces_jsonl)
from jaxrl_llm.envs.task import Problem


def _trace(seed, **kw):
    rates = {"num_ops": 4, "error_rate": 0.3, "correction_rate": 0.5, "continuation_rate": 0.6, **kw}
    return make_trace(np.random.default_rng(seed), **rates)


def test_same_seed_same_trace_and_seeds_differ():
    assert _trace(3) == _trace(3)
    assert len({_trace(s).steps for s in range(20)}) == 20


def test_no_error_at_error_rate_zero():
    for seed in range(30):
        t = _trace(seed, error_rate=0.0, continuation_rate=0.0)
        assert t.tags == ("ok",) * 4 and t.labels.tolist() == [1] * 4
        assert list(t.steps) == [s + ";" for s in chain_steps(t.operands, t.ops)]
        assert t.answer == t.reference and t.boundary == 3
        assert all(s.ok for s in parse_steps(t.operands, t.ops, "".join(t.steps)))


def test_the_step_checker_agrees_with_the_labels_on_injected_error_traces():
    # No correction, no continuation: step k is operation k, so the task's checker reads the steps as
    # an ArithChain response. Its verdicts are first-error labels; arith_chain_truth recovers the tags.
    seen_err = 0
    for seed in range(60):
        t = _trace(seed, error_rate=0.4, correction_rate=0.0, continuation_rate=0.0)
        response = "".join(t.steps)
        assert prm.arith_chain_truth(t.operands, t.ops, response) == list(t.tags)
        assert [s.ok for s in parse_steps(t.operands, t.ops, response)] == prm.first_error_labels(t.tags).tolist()
        np.testing.assert_array_equal(t.labels, prm.label_steps(t.tags))
        seen_err += "err" in t.tags
        if "err" in t.tags:  # an unresolved error propagates to the answer
            assert t.answer != t.reference and t.labels[t.tags.index("err"):].sum() == 0
    assert seen_err > 20


def test_a_fix_step_restores_the_true_value_and_clears_the_error():
    truth_of = lambda t: np.cumsum([t.operands[0]] + [x if o == "+" else -x for o, x in zip(t.ops, t.operands[1:])])
    fixes = 0
    for seed in range(60):
        t = _trace(seed, error_rate=0.4, correction_rate=1.0, continuation_rate=0.0)
        truth = truth_of(t)
        for step, tag, kind in zip(t.steps, t.tags, t.kinds):
            assert (tag == "fix") == (kind == "fix") == step.startswith(RECHECK)
            if tag == "fix":
                fixes += 1
                lhs, w = step[len(RECHECK):-1].split("=")
                assert int(w) in truth.tolist()  # the recheck writes a true running value
        assert t.answer == t.reference  # correction_rate 1 resolves every error
        assert t.labels.tolist() == prm.label_steps(t.tags).tolist()
    assert fixes > 20


def test_hand_case_boundary_and_labels():
    rng = np.random.default_rng(0)
    t = make_trace(rng, num_ops=2, operands=(12, 7, 4), ops=("+", "-"), error_rate=1.0, correction_rate=1.0)
    assert t.prompt == "12+7-4=" and t.kinds == ("step", "fix", "step", "fix")
    assert t.tags == ("err", "fix", "err", "fix") and t.labels.tolist() == [0, 1, 0, 1]
    assert t.steps[1] == "Wait, recheck: 12+7=19;" and t.steps[3] == "Wait, recheck: 19-4=15;"
    assert t.steps[0] != "12+7=19;" and t.steps[2].startswith("19-4=")
    assert t.boundary == 3 and t.answer == 15  # the last fix derives the answer; nothing to cut
    assert editor_edit(t).boundary is None

    t = make_trace(rng, num_ops=2, operands=(12, 7, 4), ops=("+", "-"), continuation_rate=1.0, max_continuation=1)
    assert t.steps[:2] == ("12+7=19;", "19-4=15;") and len(t.steps) == 3 and t.steps[2].startswith(RECHECK)
    assert t.boundary == 1 and t.kinds[2] == "recheck" and t.tags[2] == "ok"
    edit = editor_edit(t)
    assert edit.text == "12+7=19;\n\n19-4=15;\n</think>\n#15" and edit.removed_steps == 1


def test_boundary_is_the_last_step_before_the_continuation_and_states_the_answer():
    for seed in range(60):
        t = _trace(seed)
        split = hcc.split_trace(t.completion)
        assert split.steps == t.steps and split.final_answer == str(t.answer)
        assert all(k != "recheck" for k in t.kinds[: t.boundary + 1])
        assert all(k == "recheck" for k in t.kinds[t.boundary + 1:])
        assert hcc.step_mentions_answer(t.steps[t.boundary], str(t.answer))
        k_ans = hcc.answer_step(split.steps, split.final_answer)
        assert k_ans is not None and k_ans <= t.boundary  # HCC's cut search can reach b*
        edit = editor_edit(t)
        assert hcc.split_trace(edit.text).steps == t.steps[: t.boundary + 1]
        assert edit.removed_steps == len(t.steps) - 1 - t.boundary


def test_completion_scores_with_the_arith_chain_task():
    task = ArithChainTask(num_operands=5)
    for seed in range(20):
        t = _trace(seed)
        problem = Problem(t.prompt, str(t.reference), {"operands": t.operands, "ops": t.ops})
        assert task.score(problem, t.completion) == float(t.correct)
        assert chain_prompt(t.operands, t.ops) == t.prompt


def test_jsonl_round_trip_and_record_keys(tmp_path):
    traces = [_trace(s) for s in range(8)]
    path = tmp_path / "traces.jsonl"
    assert export_traces_jsonl(path, traces) == 8
    with open(path) as f:
        first = json.loads(f.readline())
    assert {"prompt", "completion", "steps", "labels", "boundary", "answer"} <= set(first)
    assert first["completion"] == traces[0].completion and first["labels"] == traces[0].labels.tolist()
    assert read_traces_jsonl(path) == traces


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="error_rate"):
        _trace(0, error_rate=1.5)
    with pytest.raises(ValueError, match="num_ops"):
        _trace(0, num_ops=0)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_traces_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+2=", "completion": "1+2=3;\n</think>\n#3"}) + "\n")
    with pytest.raises(ValueError, match="line 1: missing fields"):
        read_traces_jsonl(bad)
