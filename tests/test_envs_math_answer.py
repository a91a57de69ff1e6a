"""Math answer extraction, normalisation and the dataset-backed math task."""

from fractions import Fraction

import pytest

from jaxrl_llm.envs.math_answer import (
    answers_match,
    check_answer,
    extract_answer,
    extract_boxed,
    extract_final_number,
    normalize_answer,
    parse_number,
)
from jaxrl_llm.envs.math_task import MathAnswerTask
from jaxrl_llm.envs.task import VerifiableTask


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{{a}+{b^{2}}}", "{a}+{b^{2}}"),
        ("$\\boxed { 7 }$", " 7 "),
        ("\\boxed 5$ done", "5"),
        ("\\fbox{x}", "x"),
        ("\\boxed{unbalanced", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I have 3 apples and 12 pears", "12"),
        ("total: 1,234,567 dollars", "1,234,567"),
        ("it is -7.", "-7"),
        ("ratio 3/4 overall", "3/4"),
        ("half is \\frac{1}{2}", "\\frac{1}{2}"),
        ("x = 2.50", "2.50"),
        ("nothing here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_extract_answer_prefers_boxed():
    assert extract_answer("step 1 gives 10, so \\boxed{12} not 13") == "12"
    assert extract_answer("the answer is 13") == "13"


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("1,000", "1000"),
        ("1000.0", "1000"),
        ("2000/2", "1000"),
        ("\\frac{2000}{2}", "1000"),
        ("\\dfrac{3}{4}", "3/4"),
        ("-\\frac{1}{2}", "-1/2"),
        ("0.5", "1/2"),
        ("-0.25", "-1/4"),
        ("\u22123", "-3"),
        ("$12$", "12"),
        ("50\\%", "50"),
        ("x = 5", "5"),
        ("7.", "7"),
        ("\\text{blue}", "blue"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("1,2", "1,2"),  # not a thousands group: stays a tuple-like string
    ],
)
def test_normalize_answer(raw, canonical):
    assert normalize_answer(raw) == canonical


def test_parse_number():
    assert parse_number("-1.5/2") == Fraction(-3, 4)
    assert parse_number("1/0") is None
    assert parse_number("abc") is None


def test_answers_match_and_check_answer():
    assert answers_match("\\frac{1}{2}", "0.5")
    assert answers_match("1,000", "1000.00")
    assert not answers_match("0.333", "1/3")  # exact comparison, no tolerance
    assert not answers_match(None, "1")
    assert check_answer("Adding gives \\boxed{-\\frac{6}{4}}.", "-1.5")
    assert check_answer("so the total is 1,250.", "1250")
    assert not check_answer("so the total is 1,251.", "1250")
    assert not check_answer("I don't know", "1250")


RECORDS = [(f"What is {i} + {i}?", str(2 * i)) for i in range(200)]


def test_math_task_splits_and_scoring():
    task = MathAnswerTask(RECORDS, eval_fraction=0.2)
    assert isinstance(task, VerifiableTask)
    train = {task.problem(i, "train").prompt for i in range(task.num_problems("train"))}
    evals = {task.problem(i, "eval").prompt for i in range(task.num_problems("eval"))}
    assert len(train) + len(evals) == 200 and not (train & evals)
    assert 20 < len(evals) < 60
    p = task.sample(3)
    assert p == task.sample(3)
    assert "\\boxed{}" in p.prompt and p.prompt.startswith("What is ")
    i = int(p.prompt.split()[2])
    assert task.score(p, f"... \\boxed{{{2 * i}}}") == 1.0
    assert task.score(p, f"... \\boxed{{{2 * i + 1}}}") == 0.0
    # the split of a question does not depend on which other records are present
    smaller = MathAnswerTask(RECORDS[::2], eval_fraction=0.2)
    for k in range(smaller.num_problems("eval")):
        assert smaller.problem(k, "eval").prompt in evals


def test_math_task_bad_records():
    with pytest.raises(ValueError, match=r"records\[1\] must be a \(question, answer\) pair"):
        MathAnswerTask([("q", "a"), ("q2",)])
    with pytest.raises(ValueError, match="template must contain"):
        MathAnswerTask(RECORDS, template="no field")
    with pytest.raises(ValueError, match="split 'eval' holds no records"):
        MathAnswerTask(RECORDS[:3], eval_fraction=0.0).sample(0, "eval")
