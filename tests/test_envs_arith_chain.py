"""ArithChain: worked solutions, the rule-based step checker with error propagation, scoring."""

import pytest

from jaxrl_llm.envs.arith_chain import ArithChainTask, chain_steps, final_answer, parse_steps


def test_chain_steps_hand_case():
    assert chain_steps([12, 7, 30, 5], ["+", "-", "+"]) == ["12+7=19", "19-30=-11", "-11+5=-6"]


def test_worked_solution_scores_and_every_step_is_correct():
    task = ArithChainTask((2, 5), num_digits=2)
    for p in task.sample_batch(50, seed=0):
        solution = task.worked_solution(p)
        assert task.score(p, solution) == 1.0
        steps = task.step_labels(p, solution)
        assert len(steps) == p.metadata["difficulty"] and all(s.ok for s in steps)
        assert 2 <= len(p.metadata["operands"]) <= 5 and p.prompt.endswith("=")


def test_step_labels_error_propagation():
    ops, operands = ["+", "-", "+"], [12, 7, 30, 5]
    # Step 2 is wrong (19-30=-12); step 3 applies +5 correctly to the wrong value: still wrong.
    steps = parse_steps(operands, ops, "12+7=19;19-30=-12;-12+5=-7;#-7")
    assert [s.ok for s in steps] == [True, False, False]
    assert [(s.start, s.end) for s in steps] == [(0, 8), (8, 18), (18, 27)]
    assert [s.text for s in steps] == ["12+7=19;", "19-30=-12;", "-12+5=-7;"]
    # Wrong operand copied; an unfinished trailing step; extra steps.
    assert [s.ok for s in parse_steps(operands, ops, "12+8=20;20-30")] == [False, False]
    assert [s.ok for s in parse_steps([1, 2], ["+"], "1+2=3;3+0=3;#3")] == [True, False]
    assert parse_steps([1, 2], ["+"], "#3") == []


def test_final_answer_and_score():
    assert final_answer("1+2=3;#3") == 3 and final_answer("x#-14 and") == -14
    assert final_answer("1+2=3;3") is None and final_answer("#x") is None
    task = ArithChainTask(2, num_digits=1)
    p = task.sample(0)
    assert task.score(p, "#" + p.reference) == 1.0  # the outcome reward ignores the steps
    assert task.score(p, p.reference) == 0.0  # no answer mark
    assert task.privileged_prompt(p) == p.prompt + p.metadata["steps"][0] + ";"


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="num_operands"):
        ArithChainTask(1)
    with pytest.raises(ValueError, match="ops"):
        ArithChainTask(3, ops="*")


def test_registered_and_warm_up_records_are_worked_solutions():
    from ml_collections import ConfigDict

    from jaxrl_llm.envs import build_task
    from jaxrl_llm.train.sft_run import training_records

    data = ConfigDict({"task": "arith_chain", "task_kwargs": ConfigDict({"num_operands": 3}), "level": 1,
                       "eval_fraction": 0.1, "num_train": 4, "jsonl_path": "", "privileged_fraction": 0.0})
    task = build_task(data)
    records = training_records(data, seed=0)
    problems = task.sample_batch(4, 0, "train")
    assert [r["completion"] for r in records] == [task.worked_solution(p) for p in problems]
    assert all(r["completion"].count(";") == 2 and "#" in r["completion"] for r in records)
