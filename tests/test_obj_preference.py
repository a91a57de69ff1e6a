"""DPO, DPO-VP pair construction and BCPG-NSA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj


def test_dpo_case_d1_and_gradient():
    args = [jnp.array([v]) for v in (-10.0, -12.0, -11.0, -11.0)]
    out = obj.dpo_loss(*args, beta=0.1)
    np.testing.assert_allclose(out.loss, 0.598139, atol=1e-6)
    np.testing.assert_allclose(out.metrics["chosen_reward"], 0.1, atol=1e-6)
    np.testing.assert_allclose(out.metrics["rejected_reward"], -0.1, atol=1e-6)
    assert float(out.metrics["reward_accuracy"]) == 1.0
    # dL/dpi_w = -beta * sigmoid(-beta z)
    g = jax.grad(lambda c: obj.dpo_loss(c, *args[1:]).loss)(args[0])
    np.testing.assert_allclose(g, [-0.1 * jax.nn.sigmoid(-0.2)], atol=1e-7)
    smoothed = obj.dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    np.testing.assert_allclose(smoothed.loss, 0.9 * 0.598139 + 0.1 * -np.log(jax.nn.sigmoid(-0.2)), atol=1e-6)


def test_dpo_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        xs = [jnp.asarray(rng.normal(size=3) - 10) for _ in range(4)]
        f = lambda c, r: obj.dpo_loss(c, r, xs[2], xs[3], beta=0.3, label_smoothing=0.05).loss
        gc, gr = jax.grad(f, (0, 1))(xs[0], xs[1])
        d = jnp.asarray(rng.normal(size=3))
        fd = (f(xs[0] + 1e-6 * d, xs[1] - 1e-6 * d) - f(xs[0] - 1e-6 * d, xs[1] + 1e-6 * d)) / 2e-6
        np.testing.assert_allclose(jnp.sum(gc * d) - jnp.sum(gr * d), fd, rtol=1e-6)


def test_sequence_logp_sums_valid_tokens():
    np.testing.assert_allclose(obj.sequence_logp(jnp.array([[-1.0, -2.0, -5.0]]), jnp.array([[1, 1, 0]])), [-3.0])


def test_dpo_vp_pairs_cases_d2_d3_d4():
    rng = np.random.default_rng(0)
    scores = [1, 1, 0, -1, 0, 1, 0, -1]
    lengths = [300, 900, 500, 200, 1000, 2100, 400, 600]
    rejected = set()
    for _ in range(30):
        chosen, rej = obj.dpo_vp_pair(scores, lengths, rng=rng)
        assert chosen == 1
        rejected.add(rej)
    assert rejected == {3, 7}
    assert obj.dpo_vp_pair([1] * 8, [100] * 8, rng=rng) is None
    seen = {obj.dpo_vp_pair([0, 0, 0], [100, 300, 200], rng=rng) for _ in range(30)}
    assert seen == {(1, 2), (1, 0)}
    # all correct samples too long -> the longest is chosen; rejected from the v=0 samples
    assert obj.dpo_vp_pair([1, 1, 0], [3000, 2500, 10], rng=rng) == (0, 2)
    assert obj.dpo_vp_pair([0], [10], rng=rng) is None
    pairs = obj.dpo_vp_pairs([scores, [1] * 8], [lengths, [100] * 8], seed=3)
    assert pairs.shape == (1, 3) and pairs[0, 0] == 0 and pairs[0, 1] == 1 and pairs[0, 2] in (3, 7)
    with pytest.raises(ValueError, match="scores and lengths"):
        obj.dpo_vp_pair([1, 0], [10], rng=rng)


N1_STEP_ID = jnp.array([[0, 0, 1, 1]])


def test_nsa_consensus_and_token_advantages_case_n1():
    ok = obj.nsa_step_consensus(jnp.array([[True, True]]), jnp.array([[0.9, 0.3]]))
    assert ok.tolist() == [[True, False]]
    adv = obj.grpo_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.zeros(4, jnp.int32), num_groups=1)
    np.testing.assert_allclose(adv, [1.5, -0.5, -0.5, -0.5], atol=1e-5)
    a_hat = obj.nsa_token_advantages(jnp.array([-0.5]), N1_STEP_ID, ok)
    np.testing.assert_allclose(a_hat, [[0.5, 0.5, -0.5, -0.5]], atol=1e-6)
    # positive responses and tokens outside steps are unchanged
    np.testing.assert_allclose(obj.nsa_token_advantages(jnp.array([1.5]), N1_STEP_ID, ok), [[1.5] * 4])
    np.testing.assert_allclose(obj.nsa_token_advantages(jnp.array([-0.5]), jnp.array([[-1, 0, 1, 1]]), ok),
                               [[-0.5, 0.5, -0.5, -0.5]])


def test_bcpg_nsa_loss_case_n1():
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0])
    groups = jnp.zeros(4, jnp.int32)
    step_id = jnp.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    step_ok = jnp.array([[False, False], [True, False], [False, False], [False, False]])
    logp = -jnp.ones((4, 4))
    mask = jnp.array([[0.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4])  # response 2 only
    f = lambda lp: obj.bcpg_nsa_loss(lp, logp, mask, rewards, groups, step_id, step_ok, num_groups=1).loss
    value, grad = jax.value_and_grad(f)(logp)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    np.testing.assert_allclose(grad[1], -np.array([0.5, 0.5, -0.5, -0.5]) / 4, atol=1e-6)
    out = obj.bcpg_nsa_loss(logp, logp, jnp.ones((4, 4)), rewards, groups, step_id, step_ok, num_groups=1)
    np.testing.assert_allclose(out.metrics["frac_flipped"], 2 / 12, atol=1e-6)


def test_bcpg_nsa_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        behavior = jnp.asarray(-rng.uniform(0.5, 2.0, (4, 5)))
        logp = behavior + 0.1 * jnp.asarray(rng.normal(size=(4, 5)))
        step_id = jnp.array([[0, 0, 1, 1, -1]] * 4)
        step_ok = jnp.array([[True, False]] * 4)
        rewards, groups = jnp.array([1.0, 0.0, 0.0, 1.0]), jnp.array([0, 0, 1, 1])
        mask = jnp.ones((4, 5)).at[:, 4].set(0.0)
        f = lambda lp: obj.bcpg_nsa_loss(lp, behavior, mask, rewards, groups, step_id, step_ok, num_groups=2).loss
        d = jnp.asarray(rng.normal(size=(4, 5)))
        fd = (f(logp + 1e-6 * d) - f(logp - 1e-6 * d)) / 2e-6
        np.testing.assert_allclose(jnp.sum(jax.grad(f)(logp) * d), fd, rtol=1e-5)


def test_bcpg_nsa_bad_input():
    with pytest.raises(ValueError, match=r"step_ok must be \[B, K\]"):
        obj.nsa_token_advantages(jnp.array([-0.5]), N1_STEP_ID, jnp.array([True, False]))
    with pytest.raises(ValueError, match="prm_scores must be"):
        obj.nsa_step_consensus(jnp.array([[True, True]]), jnp.array([[0.9]]))
    with pytest.raises(ValueError, match=r"ref_rejected_logp must be \[N\]"):
        obj.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(3))
