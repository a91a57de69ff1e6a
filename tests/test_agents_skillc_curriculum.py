"""SkillC curriculum (agents-analysis.md section 1): hand values, retirement, allocation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import objectives as obj


def _run(gaps, num_types=1, **kw):
    state = obj.skillc_curriculum_init(num_types)
    out = []
    for d in gaps:
        state, lam, p_with = obj.skillc_curriculum_update(state, jnp.atleast_1d(jnp.asarray(d, jnp.float32)), **kw)
        out.append((state, float(lam), np.asarray(p_with)))
    return out


def test_init_is_never_optimistic():
    state = obj.skillc_curriculum_init(3)
    assert state.dbar.tolist() == [0.0, 0.0, 0.0] and state.patience.tolist() == [0, 0, 0]
    assert state.active.tolist() == [True, True, True] and float(state.ref) == 0.0 and state.ref.shape == ()


def test_spec_values_ramp_then_drop():
    steps = _run([0.30, 0.25, 0.20, -0.1])
    for (state, lam, p_with), dbar in zip(steps[:3], [0.03, 0.052, 0.0668]):
        np.testing.assert_allclose(float(state.dbar[0]), dbar, atol=1e-6)
        np.testing.assert_allclose(float(state.ref), dbar, atol=1e-6)  # rising gap: ref tracks it
        np.testing.assert_allclose(lam, 1.0, atol=1e-6)
        np.testing.assert_allclose(p_with, [0.5], atol=1e-6)
    state, lam, p_with = steps[3]
    np.testing.assert_allclose(float(state.dbar[0]), 0.05012, atol=1e-6)
    np.testing.assert_allclose(float(state.ref), 0.0668, atol=1e-6)
    np.testing.assert_allclose(lam, 0.750299, atol=1e-5)  # ratio 0.05012 / 0.0668
    np.testing.assert_allclose(p_with, [0.375150], atol=1e-5)
    assert obj.skillc_allocation(p_with, 8).tolist() == [3]


def test_type_retires_after_patience_and_stays_retired():
    steps = _run([-0.1] * 10 + [5.0, 5.0])
    for k in range(9):  # dbar <= 0 for 1..9 validations: still active, at p_min
        state, _, p_with = steps[k]
        assert bool(state.active[0]) and int(state.patience[0]) == k + 1
        np.testing.assert_allclose(p_with, [0.125], atol=1e-7)
    state, lam, p_with = steps[9]
    assert not bool(state.active[0]) and lam == 0.0 and p_with.tolist() == [0.0]
    assert obj.skillc_allocation(p_with, 8).tolist() == [0]  # all 8 rollouts skill-free
    for state, lam, p_with in steps[10:]:
        assert float(state.dbar[0]) > 0 and int(state.patience[0]) == 0
        assert not bool(state.active[0]) and p_with.tolist() == [0.0] and lam == 0.0


def test_mean_active_ignores_retired_types():
    # Type 1 retires at the second validation (patience 2); lam_k then follows type 0 alone.
    steps = _run([[0.3, -1.0], [0.3, -1.0], [0.0, 1.0]], num_types=2, patience=2)
    state, lam, _ = steps[1]
    assert state.active.tolist() == [True, False]
    np.testing.assert_allclose(float(state.ref), 0.057, atol=1e-6)  # dbar[0] = 0.027 + 0.03
    state, lam, p_with = steps[2]
    np.testing.assert_allclose(lam, 0.9, atol=1e-5)  # 0.0513 / 0.057
    np.testing.assert_allclose(p_with, [0.45, 0.0], atol=1e-5)


def test_allocation_keeps_both_conditions():
    p = jnp.array([0.5, 0.375150, 0.125, 0.0, 0.01])
    assert obj.skillc_allocation(p, 8).tolist() == [4, 3, 1, 0, 1]
    assert obj.skillc_allocation(jnp.array([0.5]), 2).tolist() == [1]
    assert obj.skillc_allocation(jnp.array([0.5]), 5).tolist() == [3]  # round half up: 2.5 -> 3


def test_state_is_a_pytree_and_update_jits():
    state = obj.skillc_curriculum_init(2)
    assert len(jax.tree_util.tree_leaves(state)) == 4
    update = jax.jit(lambda s, d: obj.skillc_curriculum_update(s, d))
    state, lam, p_with = update(state, jnp.array([0.3, 0.1]))
    np.testing.assert_allclose(state.dbar, [0.03, 0.01], atol=1e-7)
    np.testing.assert_allclose(float(lam), 1.0, atol=1e-6)
    np.testing.assert_allclose(p_with, [0.5, 0.25], atol=1e-6)  # 0.5 * 0.01 / ref 0.02


def test_lam_k_scales_the_skillc_correction():
    steps = _run([0.30, 0.25, 0.20, -0.1])
    lam = steps[3][1]
    r = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    z = jnp.array([1, 1, 1, 1, 0, 0, 0, 0])
    g = jnp.zeros(8, jnp.int32)
    full, _ = obj.skillc_advantages(r, g, z, num_groups=1, attribution=1.0)
    scaled, _ = obj.skillc_advantages(r, g, z, num_groups=1, attribution=lam)
    base, _ = obj.skillc_advantages(r, g, z, num_groups=1, attribution=0.0)
    np.testing.assert_allclose(scaled - base, lam * (full - base), atol=1e-6)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="num_types"):
        obj.skillc_curriculum_init(0)
    with pytest.raises(ValueError, match="val_gap"):
        obj.skillc_curriculum_update(obj.skillc_curriculum_init(2), jnp.zeros(3))
    with pytest.raises(ValueError, match="group_size"):
        obj.skillc_allocation(jnp.array([0.5]), 1)
    with pytest.raises(ValueError, match="p_with"):
        obj.skillc_allocation(jnp.array(0.5), 8)
