"""Reward functions, reward vectors, batch scoring and think-mode text helpers."""

import numpy as np
import pytest

from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.envs.rewards import (
    DEFAULT_REWARD_SPEC,
    RewardSpec,
    combine_rewards,
    conjunctive_reward,
    correctness_rewards,
    format_rewards,
    overlong_penalty,
    reward_vectors,
    score_batch,
)
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.envs.thinking import (
    autothink_base_reward,
    has_degenerate_repetition,
    is_no_think,
    split_think,
)


def test_overlong_penalty_dapo_b3b_and_ramp():
    # spec B3b: L_max 20480, L_cache 4096, |y| = 18432 -> -0.5
    r = overlong_penalty([100, 16384, 18432, 20480, 20481], max_length=20480, cache_length=4096)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r, [0.0, 0.0, -0.5, -1.0, -1.0])


def test_overlong_penalty_bad_args():
    with pytest.raises(ValueError, match="cache_length must be in"):
        overlong_penalty([1], max_length=10, cache_length=11)
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        overlong_penalty([[1]], max_length=10, cache_length=5)


def _arith_batch():
    problems = [Problem("1+2=", "3"), Problem("5-9=", "-4"), Problem("2*3=", "6")]
    responses = ["3", "-4 \\boxed{-4}", "7"]
    return ArithmeticTask(level=4), problems, responses


def test_correctness_and_score_batch():
    task, problems, responses = _arith_batch()
    np.testing.assert_array_equal(correctness_rewards(task, problems, responses), [1, 1, 0])
    out = score_batch(task, problems, responses)
    assert out.shape == (3,) and out.dtype == np.float32
    with pytest.raises(ValueError, match=r"responses must have one entry per problem \(3\); got 2"):
        score_batch(task, problems, responses[:2])


class _TwoRewardTask:
    name = "two"
    reward_names = ("exact", "length_ok")

    def sample(self, seed, split="train"):
        return Problem("p", "ab")

    def score(self, problem, response):
        return np.array([response == problem.reference, len(response) <= 3], np.float32)


def test_score_batch_vector_task():
    task = _TwoRewardTask()
    p = task.sample(0)
    out = score_batch(task, [p, p], ["ab", "abcd"])
    np.testing.assert_array_equal(out, [[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="correctness_rewards needs a scalar task"):
        correctness_rewards(task, [p], ["ab"])


def test_format_rewards():
    responses = [
        "\\boxed{1}",
        "\\boxed{1}",
        "no box",
        "think</think>\\boxed{2}",
        "\\boxed{3}</think>",
    ]
    finished = [True, False, True, True, True]
    np.testing.assert_array_equal(format_rewards(responses, finished), [1, 0, 1, 1, 1])
    np.testing.assert_array_equal(
        format_rewards(responses, finished, require_boxed=True), [1, 0, 0, 1, 1]
    )
    np.testing.assert_array_equal(
        format_rewards(responses, finished, require_boxed=True, require_think_close=True),
        [0, 0, 0, 1, 0],
    )
    with pytest.raises(ValueError, match=r"finished must be \[B\] = \[5\]; got \(2,\)"):
        format_rewards(responses, [True, True])


def test_reward_vectors_columns():
    task, problems, responses = _arith_batch()
    vec = reward_vectors(
        task,
        problems,
        responses,
        lengths=[2, 14, 9],
        finished=[True, True, False],
        max_length=12,
        cache_length=4,
        require_boxed=False,
    )
    assert vec.shape == (3, 3) and vec.dtype == np.float32
    assert DEFAULT_REWARD_SPEC.names == ("correctness", "format", "length")
    # length: 2 <= 8 -> 0; 14 > 12 -> -1; 9 -> (8 - 9) / 4 = -0.25
    np.testing.assert_allclose(vec, [[1, 1, 0], [1, 1, -1], [0, 0, -0.25]])
    spec = DEFAULT_REWARD_SPEC.ranges
    assert np.all(vec >= spec[:, 0]) and np.all(vec <= spec[:, 1])
    np.testing.assert_allclose(combine_rewards(vec, [1.0, 0.5, 1.0]), [1.5, 0.5, -0.25])
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[3\]"):
        reward_vectors(task, problems, responses, lengths=[1], finished=[1, 1, 1], max_length=4,
                       cache_length=2)


def test_reward_spec_validation_and_combine_shapes():
    with pytest.raises(ValueError, match="every low must be < high"):
        RewardSpec(("a",), (1.0,), (0.0,))
    with pytest.raises(ValueError, match=r"vectors must be \[B, R\] and weights \[R\]"):
        combine_rewards(np.ones((2, 3)), [1.0, 1.0])


def test_conjunctive_reward_lang_l3():
    # spec L3: R_lc = 1, R_format = 1, R_acc = 0 -> 0
    np.testing.assert_array_equal(conjunctive_reward([1, 1], [1, 1], [0, 1]), [0, 1])
    with pytest.raises(ValueError, match=r"components\[1\] must be \[B\]"):
        conjunctive_reward([1, 1], [1])


def test_split_think_and_mode():
    assert split_think("a</think>b</think>ans") == ("a</think>b", "ans")
    assert split_think("never closed").answer is None
    assert is_no_think("prompt <think>\n...\n</think>\n\n42")
    assert is_no_think("prompt <think>\n", response="</think>\n\n42")
    assert not is_no_think("prompt <think>\nlong thought</think>\n\n42", response="long")


def test_degenerate_repetition():
    bigrams = " ".join(["go on"] * 12)
    assert has_degenerate_repetition(bigrams)
    assert not has_degenerate_repetition(" ".join(["go on"] * 9))
    assert has_degenerate_repetition("x" * 120)
    assert not has_degenerate_repetition("x" * 119 + " normal words here")
    # trigram chunks aligned at the first word
    assert has_degenerate_repetition("a b c " * 10, max_ngram=3)
    assert not has_degenerate_repetition("a b c " * 10, max_ngram=2)


def test_autothink_base_reward_at3():
    assert autothink_base_reward(True, no_think=False, format_ok=True) == 1.0
    assert autothink_base_reward(False, no_think=False, format_ok=True) == 0.0
    assert autothink_base_reward(True, no_think=True, format_ok=True) == 2.0
    assert autothink_base_reward(False, no_think=True, format_ok=True) == -1.0
    assert autothink_base_reward(True, no_think=True, format_ok=False) == 0.0
    # spec AT3: 12 repeated bigrams -> -2 for no-think wrong; 0 for think wrong
    text = " ".join(["and then"] * 12)
    assert autothink_base_reward(False, no_think=True, format_ok=True, response=text) == -2.0
    assert autothink_base_reward(False, no_think=False, format_ok=True, response=text) == 0.0


def test_partial_credit_hand_cases():
    from jaxrl_llm.envs.rewards import get_scorer, partial_credit

    assert partial_credit("148", "147") == pytest.approx(2 / 3)
    assert partial_credit("148", " 148\n") == 1.0 and partial_credit("148", "9") == 0.0
    assert partial_credit("-12", "-1") == pytest.approx(2 / 3) and partial_credit("", "1") == 0.0
    from jaxrl_llm.envs.task import Problem

    problems = [Problem("1+1=", "2"), Problem("7+8=", "15")]
    out = get_scorer("partial")(None, problems, ["2", "16"], lengths=None, finished=None, max_length=5)
    np.testing.assert_allclose(out, [1.0, 0.5])
    assert out.dtype == np.float32
