"""Arithmetic task: exact answers, determinism, difficulty knobs and disjoint splits."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import (
    ARITHMETIC_LEVELS,
    ArithmeticLevel,
    ArithmeticTask,
    evaluate_expression,
    parse_leading_int,
)
from jaxrl_llm.envs.task import Problem, VerifiableTask


def test_evaluate_expression_hand_cases():
    assert evaluate_expression([12, 345], ["+"]) == 357
    assert evaluate_expression([3, 15], ["-"]) == -12
    assert evaluate_expression([2, 3, 4], ["+", "*"]) == 14  # * before +
    assert evaluate_expression([20, 3, 4], ["-", "*"]) == 8
    assert evaluate_expression([2, 3, 4, 5], ["*", "-", "*"]) == -14
    assert evaluate_expression([7, 0, 9], ["*", "+"]) == 9


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(0, 99999), min_size=2, max_size=5),
    st.data(),
)
def test_evaluate_expression_matches_python(operands, data):
    ops = data.draw(st.lists(st.sampled_from("+-*"), min_size=len(operands) - 1,
                             max_size=len(operands) - 1))
    text = "".join(f"{x}{op}" for x, op in zip(operands, ops)) + str(operands[-1])
    assert evaluate_expression(operands, ops) == eval(text)  # noqa: S307 (digits and +-* only)


def test_evaluate_expression_rejects_bad_ops():
    with pytest.raises(ValueError, match="ops must have len"):
        evaluate_expression([1, 2], ["+", "+"])
    with pytest.raises(ValueError, match="ops entries must be one of"):
        evaluate_expression([1, 2], ["/"])


def test_prompt_format_and_answer():
    task = ArithmeticTask(level=5)
    assert isinstance(task, VerifiableTask)
    for seed in range(20):
        p = task.sample(seed)
        assert isinstance(p, Problem)
        assert re.fullmatch(r"(\d{1,3}[+\-*]){2}\d{1,3}=", p.prompt)
        assert p.reference == str(eval(p.prompt[:-1]))  # noqa: S307
        assert p.metadata["answer"] == int(p.reference)
        assert p.metadata["split"] == "train"
        assert p.metadata["level"] == 5


def test_prompt_is_encodable_by_char_tokenizer():
    tok = CharTokenizer()
    p = ArithmeticTask(level=7).sample(3)
    assert tok.decode(tok.encode(p.prompt + p.reference)) == p.prompt + p.reference


def test_deterministic_given_seed():
    a, b = ArithmeticTask(level=6), ArithmeticTask(level=6)
    assert a.sample(11) == b.sample(11)
    assert a.sample(11, "eval") == b.sample(11, "eval")
    assert a.sample_batch(8, seed=4) == b.sample_batch(8, seed=4)
    assert len({p.prompt for p in a.sample_batch(16, seed=4)}) > 1


def test_levels_are_graded():
    for i, lv in enumerate(ARITHMETIC_LEVELS):
        task = ArithmeticTask(level=i)
        for p in task.sample_batch(10, seed=i):
            operands = p.metadata["operands"]
            assert len(operands) == lv.num_operands
            assert all(0 <= x < 10**lv.num_digits for x in operands)
            assert set(p.metadata["ops"]) <= set(lv.ops)
    for easier, harder in zip(ARITHMETIC_LEVELS, ARITHMETIC_LEVELS[1:]):
        knobs_easy = (easier.num_digits, easier.num_operands, len(easier.ops))
        knobs_hard = (harder.num_digits, harder.num_operands, len(harder.ops))
        assert set(easier.ops) <= set(harder.ops)
        assert all(e <= h for e, h in zip(knobs_easy, knobs_hard)) and knobs_easy != knobs_hard


def test_custom_level():
    task = ArithmeticTask(ArithmeticLevel(num_digits=1, num_operands=4, ops="*"))
    p = task.sample(0)
    assert p.prompt.count("*") == 3
    assert p.metadata["level"] is None


def test_splits_are_disjoint_and_eval_fraction_respected():
    task = ArithmeticTask(level=2, eval_fraction=0.2)
    train = {p.prompt for p in task.sample_batch(400, seed=0, split="train")}
    evals = {p.prompt for p in task.sample_batch(400, seed=0, split="eval")}
    assert train and evals and not (train & evals)
    assert all(task.split_of(x) == "train" for x in train)
    assert all(task.split_of(x) == "eval" for x in evals)
    # level 2 has 100*100*2 prompts; the hash split should hold out close to 20% of them
    rng = np.random.default_rng(0)
    prompts = [task.draw(rng)[0] for _ in range(2000)]
    share = np.mean([task.split_of(x) == "eval" for x in prompts])
    assert 0.16 < share < 0.24


def test_eval_set_distinct_and_exhaustion_error():
    task = ArithmeticTask(level=0, eval_fraction=0.1)
    eval_set = task.eval_set(5, seed=1)
    assert len({p.prompt for p in eval_set}) == 5
    assert eval_set == task.eval_set(5, seed=1)
    # level 0 has only 100 prompts, so ~10% of them cannot supply 60 distinct eval problems
    with pytest.raises(ValueError, match="n=60 distinct eval problems"):
        task.eval_set(60)


def test_score():
    task = ArithmeticTask(level=2)
    p = Problem("3-15=", "-12", {})
    assert task.score(p, "-12") == 1.0
    assert task.score(p, " -12\nbecause") == 1.0
    assert task.score(p, "12") == 0.0
    assert task.score(p, "-120") == 0.0
    assert task.score(p, "x=-12") == 0.0
    assert task.score(p, "") == 0.0


def test_parse_leading_int():
    assert parse_leading_int("357") == 357
    assert parse_leading_int("  -4 apples") == -4
    assert parse_leading_int("abc") is None


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="level must be in"):
        ArithmeticTask(level=99)
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        ArithmeticTask(eval_fraction=1.0)
    with pytest.raises(ValueError, match="split must be one of"):
        ArithmeticTask().sample(0, split="test")
    with pytest.raises(ValueError, match="ops must be distinct"):
        ArithmeticLevel(num_digits=1, num_operands=2, ops="/")
    with pytest.raises(TypeError, match="seed must be an int"):
        ArithmeticTask().sample(1.5)
