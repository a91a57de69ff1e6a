"""Reward shaping: AutoThink stages and degeneration penalty, LANG hints/switch/reward."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj


def test_autothink_base_reward_table():
    correct = jnp.array([True, False, True, False, True])
    think = jnp.array([True, True, False, False, False])
    fmt = jnp.array([True, True, True, True, False])
    np.testing.assert_allclose(obj.autothink_base_reward(correct, think, fmt), [1.0, 0.0, 2.0, -1.0, 0.0])


def test_autothink_stage1_batch_balance_case_at1():
    correct = jnp.array([True, True, False, True])
    think = jnp.array([True, True, True, False])
    base = obj.autothink_base_reward(correct, think, jnp.ones(4, bool))
    shaped, metrics = obj.autothink_batch_balance(base, correct, think, balance_rate=0.5)
    np.testing.assert_allclose(shaped, [0.5, 0.5, -0.5, 2.0], atol=1e-6)
    np.testing.assert_allclose(metrics["balance_lambda"], 0.5, atol=1e-6)
    np.testing.assert_allclose(metrics["think_rate"], 0.75, atol=1e-6)
    # mirror case: no-think over-represented -> no-think targets +1 / -2
    shaped2, _ = obj.autothink_batch_balance(jnp.array([2.0, -1.0, 2.0, 1.0]), jnp.array([True, False, True, True]),
                                             jnp.array([False, False, False, True]))
    np.testing.assert_allclose(shaped2, [1.5, -1.5, 1.5, 1.0], atol=1e-6)
    off, _ = obj.autothink_batch_balance(base, correct, think, balance_rate=1.0)
    np.testing.assert_allclose(off, base)


def test_autothink_stage3_length_bonus_case_at2():
    lengths = jnp.array([100, 200, 300, 100, 200, 300, 50])
    correct = jnp.array([True, True, True, False, False, False, True])
    groups = jnp.array([0, 0, 0, 0, 0, 0, 1])
    bonus = obj.autothink_length_bonus(lengths, correct, groups, num_groups=2)
    np.testing.assert_allclose(bonus[:3], [0.051271, 0.0, -0.048771], atol=1e-6)
    np.testing.assert_allclose(bonus[3:6], [-0.051271, 0.0, 0.048771], atol=1e-6)
    assert float(bonus[6]) == 0.0  # a subgroup of one gets no length term


def test_autothink_degeneration_case_at3():
    text = " ".join(["the answer"] * 12)
    assert obj.has_degenerate_repetition(text)
    assert not obj.has_degenerate_repetition("a b c d e f g h i j k l m n o p")
    assert obj.has_degenerate_repetition("x" * 130)
    assert not obj.has_degenerate_repetition(" ".join(["the answer"] * 9))
    degenerate = jnp.array([True, True])
    base = obj.autothink_base_reward(jnp.array([False, False]), jnp.array([False, True]), jnp.ones(2, bool))
    np.testing.assert_allclose(obj.autothink_degeneration_penalty(base, degenerate), [-2.0, 0.0])


def test_autothink_dapo_overlong_case_b3b():
    np.testing.assert_allclose(obj.dapo_overlong_penalty(jnp.array([18432])), [-0.5], atol=1e-6)


def test_lang_hint_schedule_case_l1():
    lengths = obj.lang_hint_length(np.array([0, 25, 50, 100]), 100, 40)
    assert lengths.tolist() == [40, 34, 20, 0]
    np.testing.assert_allclose(obj.lang_hint_fraction(25, 100), 0.853553, atol=1e-6)
    assert obj.lang_hint_length(50, 100, 40, schedule="linear") == 20
    assert obj.lang_hint_length(150, 100, 40) == 0
    with pytest.raises(ValueError, match="schedule"):
        obj.lang_hint_fraction(1, 10, schedule="exp")


def test_lang_switch_case_l2_is_irreversible():
    state = obj.LangSwitchState(jnp.array([0.58, 0.1, 0.0]), jnp.zeros(3, bool))
    state = obj.lang_switch_update(state, jnp.array([0.8, 0.2, 0.0]), alpha=0.9, tau=0.6)
    np.testing.assert_allclose(state.usefulness_ema, [0.602, 0.11, 0.0], atol=1e-6)
    assert state.hint_off.tolist() == [True, False, False]
    state = obj.lang_switch_update(state, jnp.array([0.0, 0.2, 0.0]))
    assert bool(state.hint_off[0])


def test_lang_group_usefulness_counts_prompts_with_a_positive_rollout():
    adv = jnp.array([1.0, -1.0, -1.0, -1.0, 0.5, 0.0])
    prompt_ids = jnp.array([0, 0, 1, 1, 2, 2])
    resource = jnp.array([0, 0, 2, 1])  # prompt 3 is absent from the batch
    u, present = obj.lang_group_usefulness(adv, prompt_ids, resource, num_prompts=4)
    np.testing.assert_allclose(u, [0.5, 0.0, 1.0])
    assert present.tolist() == [True, False, True]
    state = obj.lang_switch_update(obj.lang_switch_init(), u, present)
    np.testing.assert_allclose(state.usefulness_ema, [0.05, 0.0, 0.1], atol=1e-6)
    assert "en" in obj.RESOURCE_GROUPS["high"] and "sw" in obj.RESOURCE_GROUPS["low"]


def test_lang_reward_case_l3():
    r = obj.lang_reward(jnp.array([1, 1, 0]), jnp.array([1, 1, 1]), jnp.array([0, 1, 1]))
    np.testing.assert_allclose(r, [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="correct must be"):
        obj.lang_reward(jnp.array([1, 1]), jnp.array([1, 1]), jnp.array([1]))
