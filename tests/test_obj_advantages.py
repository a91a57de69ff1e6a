"""Advantage estimators: GRPO, Dr.GRPO, RLOO, GAE, DAPO filter, RDPO, SkillC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxrl_llm.objectives as obj

ONE_GROUP = jnp.zeros(4, jnp.int32)


def test_grpo_cases_b1():
    r = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(obj.grpo_advantages(r, ONE_GROUP, num_groups=1),
                               [0.866024, -0.866024, -0.866024, 0.866024], atol=1e-6)
    np.testing.assert_allclose(obj.grpo_advantages(r, ONE_GROUP, num_groups=1, unbiased_std=False),
                               [0.999998, -0.999998, -0.999998, 0.999998], atol=1e-6)
    np.testing.assert_allclose(obj.grpo_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]), ONE_GROUP, num_groups=1),
                               [1.499997, -0.499999, -0.499999, -0.499999], atol=1e-6)


def test_drgrpo_and_rloo_cases_b2_b6():
    r = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(obj.drgrpo_advantages(r, ONE_GROUP, num_groups=1), [0.5, -0.5, -0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(obj.rloo_advantages(r, ONE_GROUP, num_groups=1), [2 / 3, -2 / 3, -2 / 3, 2 / 3], atol=1e-6)


def test_gae_case_b5():
    rewards = jnp.array([[0.0, 0.0, 1.0]])
    values = jnp.array([[0.5, 0.6, 0.7]])
    adv, ret = obj.gae_advantages(rewards, values, jnp.ones((1, 3)), gamma=1.0, lam=0.95, whiten=False)
    np.testing.assert_allclose(adv, [[0.46575, 0.385, 0.3]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.96575, 0.985, 1.0]], atol=1e-6)
    white, ret2 = obj.gae_advantages(rewards, values, jnp.ones((1, 3)), gamma=1.0, lam=0.95)
    np.testing.assert_allclose(ret2, ret, atol=1e-7)
    a = np.array([0.46575, 0.385, 0.3])
    np.testing.assert_allclose(white, [(a - a.mean()) / a.std(ddof=1)], atol=1e-5)


def test_gae_skips_masked_observation_tokens():
    # An observation token between two action tokens must not change the action tokens' advantages.
    rewards = jnp.array([[0.0, 0.0, 1.0]])
    values = jnp.array([[0.5, 0.6, 0.7]])
    with_obs_r = jnp.array([[0.0, 0.0, 0.0, 1.0]])
    with_obs_v = jnp.array([[0.5, 0.6, 99.0, 0.7]])
    plain, _ = obj.gae_advantages(rewards, values, jnp.ones((1, 3)), whiten=False)
    obs, _ = obj.gae_advantages(with_obs_r, with_obs_v, jnp.array([[1.0, 1.0, 0.0, 1.0]]), whiten=False)
    np.testing.assert_allclose(obs[:, [0, 1, 3]], plain, atol=1e-6)


def test_gae_masked_tokens_get_zero_advantage_and_return_their_value():
    # Row 0: a masked observation in the middle and a masked tail; row 1: a prompt token and a tail.
    # Values on masked tokens are junk that must not leak into the valid tokens.
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    values = jnp.array([[0.5, 99.0, 0.7, -7.0], [3.0, 0.2, 0.4, 5.0]])
    mask = jnp.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    adv, ret = obj.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    # Row 0: A_2 = 1 - 0.7 = 0.3; A_0 = (0.9 * 0.7 - 0.5) + 0.9 * 0.8 * 0.3 = 0.13 + 0.216.
    # Row 1: A_2 = 1 - 0.4 = 0.6; A_1 = (0.9 * 0.4 - 0.2) + 0.72 * 0.6 = 0.16 + 0.432.
    np.testing.assert_allclose(adv, [[0.346, 0.0, 0.3, 0.0], [0.0, 0.592, 0.6, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.846, 99.0, 1.0, -7.0], [3.0, 0.792, 1.0, 5.0]], atol=1e-6)
    white, _ = obj.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    np.testing.assert_array_equal(np.asarray(white)[np.asarray(mask) == 0], 0.0)


def _gae_reference(rewards, values, mask, gamma, lam):
    """Float64 loop over each row, skipping masked tokens."""
    adv = np.zeros_like(rewards, np.float64)
    for b in range(rewards.shape[0]):
        next_value = next_adv = 0.0
        for t in reversed(range(rewards.shape[1])):
            if not mask[b, t]:
                continue
            next_adv = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * next_adv
            next_value = values[b, t]
            adv[b, t] = next_adv
    return adv, adv + values


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 100_000))
def test_gae_matches_a_float64_reference_loop(seed):
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(size=(3, 9)), rng.normal(size=(3, 9))
    mask = rng.random((3, 9)) < 0.6
    gamma, lam = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    adv, ret = obj.gae_advantages(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                                  jnp.asarray(mask), gamma=gamma, lam=lam, whiten=False)
    want_adv, want_ret = _gae_reference(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, atol=1e-5)


def test_dapo_filter_and_overlong_cases_b3():
    r = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    g = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(obj.dapo_group_keep_mask(r, g, num_groups=2), [False, True])
    np.testing.assert_allclose(obj.dapo_overlong_penalty(jnp.array([18432, 100, 16384, 20480, 30000])),
                               [-0.5, 0.0, 0.0, -1.0, -1.0], atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 100_000))
def test_group_normalised_advantages_sum_to_zero_per_group_and_permute(seed):
    rng = np.random.default_rng(seed)
    groups = jnp.asarray(np.repeat(np.arange(3), 4)[rng.permutation(12)], jnp.int32)
    r = jnp.asarray(rng.normal(size=12), jnp.float32)
    perm = rng.permutation(12)
    for fn in (obj.grpo_advantages, obj.drgrpo_advantages, obj.rloo_advantages):
        a = fn(r, groups, num_groups=3)
        sums = jax.ops.segment_sum(a, groups, num_segments=3)
        np.testing.assert_allclose(sums, 0.0, atol=1e-5)
        np.testing.assert_allclose(fn(r[perm], groups[perm], num_groups=3), a[perm], atol=1e-6)


def test_group_ops_are_jit_and_vmap_safe():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0, 3.0, 1.0], [0.0, 2.0, 1.0, 1.0, 0.0, 5.0]])
    g = jnp.array([0, 0, 1, 1, 2, 2], jnp.int32)
    eager = jnp.stack([obj.grpo_advantages(row, g, num_groups=3) for row in r])
    fn = jax.jit(jax.vmap(lambda x: obj.grpo_advantages(x, g, num_groups=3)))
    np.testing.assert_allclose(fn(r), eager, atol=1e-6)
    # A singleton group cannot be detected under jit: it keeps its raw reward.
    single = jax.jit(lambda x, gi: obj.grpo_advantages(x, gi, num_groups=2))(jnp.array([1.0, 0.0, 7.0]),
                                                                             jnp.array([0, 0, 1]))
    np.testing.assert_allclose(single[2], 7.0 / (1.0 + 1e-6), rtol=1e-6)


def test_bad_group_inputs_name_the_array():
    with pytest.raises(ValueError, match="group_ids: group 1 has one member"):
        obj.grpo_advantages(jnp.array([1.0, 0.0, 1.0]), jnp.array([0, 0, 1]), num_groups=2)
    with pytest.raises(ValueError, match=r"group_ids must be \[B\]"):
        obj.rloo_advantages(jnp.zeros(4), jnp.zeros(3, jnp.int32), num_groups=1)
    with pytest.raises(ValueError, match=r"rewards must be \[B\]"):
        obj.grpo_advantages(jnp.zeros((4, 2)), ONE_GROUP, num_groups=1)
    with pytest.raises(ValueError, match="group_ids must lie in"):
        obj.grpo_advantages(jnp.zeros(4), jnp.array([0, 0, 5, 5]), num_groups=2)
    with pytest.raises(ValueError, match="values must be"):
        obj.gae_advantages(jnp.zeros((1, 3)), jnp.zeros((1, 4)), jnp.ones((1, 3)))


# ---- RDPO (reconstructed formulas, spec section 3) ----

RDPO_R = jnp.array([[0.0, 0.2], [0.0, 0.4], [1.0, 0.6], [1.0, 0.8]])
# One compiled program per shape instead of op-by-op dispatch (keeps the suite fast).
rdpo_jit = jax.jit(obj.rdpo_advantages, static_argnames=("num_groups", "whitening"))


def test_rdpo_maq_case():
    q, mag, active = obj.maq_normalize(RDPO_R, jnp.ones((4, 2), bool), ONE_GROUP, num_groups=1,
                                       low=jnp.zeros(2), high=jnp.ones(2))
    np.testing.assert_allclose(q[:, 0], [-0.5, -0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(q[:, 1], [-0.45, -0.15, 0.15, 0.45], atol=1e-6)
    np.testing.assert_allclose(mag[0], [1.0, 0.6], atol=1e-6)
    assert bool(active.all())


def test_rdpo_whitening_case_float64():
    with jax.enable_x64(True):
        adv, metrics = rdpo_jit(jnp.asarray(RDPO_R, jnp.float64), ONE_GROUP, num_groups=1)
        np.testing.assert_allclose(adv, [-0.624113, -0.579209, 0.579209, 0.624113], atol=1e-6)
        np.testing.assert_allclose(metrics["abs_corr_before"], 0.894427, atol=1e-6)
        assert float(metrics["abs_corr_after"]) < 1e-5
        naive, _ = rdpo_jit(jnp.asarray(RDPO_R, jnp.float64), ONE_GROUP, num_groups=1, whitening="none")
        np.testing.assert_allclose(naive, [-0.95, -0.65, 0.65, 0.95], atol=1e-6)
    adv32, _ = rdpo_jit(RDPO_R, ONE_GROUP, num_groups=1)
    np.testing.assert_allclose(adv32, [-0.624113, -0.579209, 0.579209, 0.624113], atol=1e-5)


def test_rdpo_constant_or_undefined_dimension_contributes_nothing():
    r = jnp.concatenate([RDPO_R, jnp.full((4, 1), 0.7)], axis=1)
    adv, metrics = rdpo_jit(r, ONE_GROUP, num_groups=1)
    base, _ = rdpo_jit(RDPO_R, ONE_GROUP, num_groups=1)
    np.testing.assert_allclose(adv, base, atol=1e-6)
    assert float(metrics["active_dims"]) == 2.0 and float(metrics["magnitude_2"]) == 0.0
    nan_dim = jnp.concatenate([RDPO_R[:, :1], jnp.full((4, 1), jnp.nan)], axis=1)
    adv_nan, m = rdpo_jit(nan_dim, ONE_GROUP, num_groups=1)
    np.testing.assert_allclose(adv_nan, [-0.5, -0.5, 0.5, 0.5], atol=1e-6)
    assert float(m["active_dims"]) == 1.0


def test_rdpo_groups_are_independent_and_jit_safe():
    r = jnp.concatenate([RDPO_R, RDPO_R[::-1] * 0.5], axis=0)
    g = jnp.array([0, 0, 0, 0, 1, 1, 1, 1], jnp.int32)
    adv = jax.jit(lambda x, gi: rdpo_jit(x, gi, num_groups=2)[0])(r, g)
    first, _ = rdpo_jit(RDPO_R, ONE_GROUP, num_groups=1)
    second, _ = rdpo_jit(RDPO_R[::-1] * 0.5, ONE_GROUP, num_groups=1)
    np.testing.assert_allclose(adv, jnp.concatenate([first, second]), atol=1e-5)
    np.testing.assert_allclose(jax.ops.segment_sum(adv, g, num_segments=2), 0.0, atol=1e-5)


def test_rdpo_bad_input():
    with pytest.raises(ValueError, match=r"rewards must be \[B, D\]"):
        obj.rdpo_advantages(jnp.zeros(4), ONE_GROUP, num_groups=1)
    with pytest.raises(ValueError, match=r"weights must be \[D\]"):
        obj.rdpo_advantages(RDPO_R, ONE_GROUP, num_groups=1, weights=jnp.ones(3))


# ---- SkillC (reconstructed, spec section 6) ----

SKILL_R = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
SKILL_Z = jnp.array([1, 1, 1, 1, 0, 0, 0, 0])
SKILL_G = jnp.zeros(8, jnp.int32)


def test_skillc_case_c1():
    adv, metrics = obj.skillc_advantages(SKILL_R, SKILL_G, SKILL_Z, num_groups=1)
    expected = [0.174164, 0.174164, 0.174164, -1.274163, 1.774163, -0.674164, -0.674164, -0.674164]
    np.testing.assert_allclose(adv, expected, atol=1e-5)
    np.testing.assert_allclose(metrics["gap_mean"], 0.5, atol=1e-6)
    np.testing.assert_allclose(metrics["frac_corrected"], 0.5, atol=1e-6)


def test_skillc_correction_is_one_sided_case_c2():
    adv, metrics = obj.skillc_advantages(SKILL_R, SKILL_G, 1 - SKILL_Z, num_groups=1)
    assert float(metrics["frac_corrected"]) == 0.0
    no_corr, _ = obj.skillc_advantages(SKILL_R, SKILL_G, 1 - SKILL_Z, num_groups=1, attribution=0.0)
    np.testing.assert_allclose(adv, no_corr, atol=1e-7)


def test_skillc_curriculum_scales_and_retires():
    # Two types, patience 2. Step 1: dbar = [0.02, -0.1], ref = max(0, mean -0.04) = 0 => lam 0,
    # p_with = [0.5 (0.01 / 1e-6 clipped), 0.125 (p_min)].
    state = obj.skillc_curriculum_init(2)
    state, lam, p_with = obj.skillc_curriculum_update(state, jnp.array([0.2, -1.0]), patience=2)
    np.testing.assert_allclose(state.dbar, [0.02, -0.1], atol=1e-6)
    assert state.patience.tolist() == [0, 1] and state.active.tolist() == [True, True]
    np.testing.assert_allclose(float(state.ref), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(lam), 0.0, atol=1e-7)
    np.testing.assert_allclose(p_with, [0.5, 0.125], atol=1e-6)
    # Step 2: dbar = [0.058, -0.19]; type 1 hits patience 2 and retires; ref = 0.058 => lam 1.
    state, lam, p_with = obj.skillc_curriculum_update(state, jnp.array([0.4, -1.0]), patience=2)
    np.testing.assert_allclose(state.dbar, [0.058, -0.19], atol=1e-6)
    assert state.active.tolist() == [True, False]
    np.testing.assert_allclose(float(state.ref), 0.058, atol=1e-6)
    np.testing.assert_allclose(float(lam), 1.0, atol=1e-6)
    np.testing.assert_allclose(p_with, [0.5, 0.0], atol=1e-6)
    # Step 3: type 1's dbar turns positive (0.329) but retirement is permanent; ref = 0.0922.
    state, _, p_with = obj.skillc_curriculum_update(state, jnp.array([0.4, 5.0]), patience=2)
    np.testing.assert_allclose(state.dbar, [0.0922, 0.329], atol=1e-6)
    assert state.active.tolist() == [True, False] and float(p_with[1]) == 0.0
    # Step 4: dbar[0] = 0.08298 => ratio 0.9 against ref 0.0922: lam 0.9, p_with 0.45.
    state, lam, p_with = obj.skillc_curriculum_update(state, jnp.array([0.0, 0.0]), patience=2)
    np.testing.assert_allclose(float(lam), 0.9, atol=1e-5)
    np.testing.assert_allclose(p_with, [0.45, 0.0], atol=1e-5)


def test_skillc_bad_input():
    with pytest.raises(ValueError, match=r"cond must be \[B\]"):
        obj.skillc_advantages(SKILL_R, SKILL_G, SKILL_Z[:4], num_groups=1)
