"""Policy losses: PPO clip, dual-clip, DAPO, GSPO, TBPO, KL terms; hand cases, gradients, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxrl_llm.objectives as obj


def one_token(log_ratio):
    logp = jnp.array([[float(log_ratio)]])
    return logp, jnp.zeros((1, 1)), jnp.ones((1, 1))


def loss_and_grad(fn, logp, *args, **kw):
    return jax.value_and_grad(lambda lp: fn(lp, *args, **kw).loss)(logp)


# ---- hand-computed cases (spec B1c, B3a, B4, B7, T1-T4) ----

def test_k3_kl_case_b1c():
    kl = obj.kl_estimate(jnp.array([[-1.0]]), jnp.array([[-1.2]]), kind="k3")
    np.testing.assert_allclose(kl, [[np.exp(-0.2) + 0.2 - 1.0]], atol=1e-6)
    np.testing.assert_allclose(kl, [[0.0187308]], atol=1e-6)
    np.testing.assert_allclose(obj.kl_estimate(jnp.array([[-1.0]]), jnp.array([[-1.2]]), kind="k1"), [[0.2]], atol=1e-6)
    np.testing.assert_allclose(obj.kl_estimate(jnp.array([[-1.0]]), jnp.array([[-1.2]]), kind="k2"), [[0.02]], atol=1e-6)


def test_dapo_clip_higher_case_b3a():
    logp, old, mask = one_token(np.log(1.25))
    adv = jnp.array([1.0])
    np.testing.assert_allclose(obj.dapo_loss(logp, old, adv, mask).loss, -1.25, atol=1e-6)
    np.testing.assert_allclose(obj.ppo_clip_loss(logp, old, adv, mask).loss, -1.2, atol=1e-6)


def test_dual_clip_case_b7():
    logp, old, mask = one_token(np.log(5.0))
    neg = jnp.array([-1.0])
    np.testing.assert_allclose(obj.ppo_clip_loss(logp, old, neg, mask).loss, 5.0, atol=1e-5)
    value, grad = loss_and_grad(obj.dual_clip_loss, logp, old, neg, mask)
    np.testing.assert_allclose(value, 3.0, atol=1e-6)
    assert float(jnp.abs(grad).max()) == 0.0
    assert float(obj.dual_clip_loss(logp, old, neg, mask).metrics["pg_clipfrac_lower"]) == 1.0
    logp, old, mask = one_token(np.log(1.5))
    value, grad = loss_and_grad(obj.dual_clip_loss, logp, old, jnp.array([1.0]), mask)
    np.testing.assert_allclose(value, -1.2, atol=1e-6)
    assert float(jnp.abs(grad).max()) == 0.0


def test_gspo_case_b4():
    logp = jnp.array([[0.1, -0.3]])
    old, mask = jnp.zeros((1, 2)), jnp.ones((1, 2))
    value, grad = loss_and_grad(obj.gspo_loss, logp, old, jnp.array([1.0]), mask)
    np.testing.assert_allclose(value, -0.904837, atol=1e-6)
    np.testing.assert_allclose(grad, [[-0.904837 / 2, -0.904837 / 2]], atol=1e-6)
    value, grad = loss_and_grad(obj.gspo_loss, logp, old, jnp.array([-1.0]), mask)
    np.testing.assert_allclose(value, 0.9997, atol=1e-6)
    assert float(jnp.abs(grad).max()) == 0.0


def tbpo_one(log_ratios, adv, rollout_gap=(0.0, 0.0)):
    logp = jnp.array([log_ratios])
    old = jnp.zeros_like(logp)
    rollout = old - jnp.array([rollout_gap])
    return loss_and_grad(obj.tbpo_loss, logp, old, rollout, jnp.array([adv]), jnp.ones_like(logp))


def test_tbpo_negative_inside_band_case_t1():
    value, grad = tbpo_one([0.001, 0.0], -1.0)
    np.testing.assert_allclose(value, np.exp(0.0005), atol=1e-6)
    np.testing.assert_allclose(value, 1.000500, atol=1e-6)
    assert float(jnp.abs(grad).min()) > 0.0


def test_tbpo_negative_outside_band_is_dropped_case_t2():
    value, grad = tbpo_one([0.002, 0.0], -1.0)
    assert float(value) == 0.0 and float(jnp.abs(grad).max()) == 0.0
    gspo_value, gspo_grad = loss_and_grad(obj.gspo_loss, jnp.array([[0.002, 0.0]]), jnp.zeros((1, 2)),
                                          jnp.array([-1.0]), jnp.ones((1, 2)), clip_low=0.2, clip_high=0.2)
    np.testing.assert_allclose(gspo_value, 1.001001, atol=1e-6)
    assert float(jnp.abs(gspo_grad).max()) > 0.0
    out = obj.tbpo_loss(jnp.array([[0.002, 0.0]]), jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([-1.0]),
                        jnp.ones((1, 2)))
    assert float(out.metrics["frac_dropped_neg"]) == 1.0


def test_tbpo_mismatch_weight_is_capped_case_t3():
    prox, rollout = jnp.zeros((1, 2)), -jnp.array([[0.5, 1.5]])
    w = obj.tbpo_mismatch_weight(prox, rollout, jnp.ones((1, 2)))
    np.testing.assert_allclose(w, [2.0], atol=1e-6)
    np.testing.assert_allclose(obj.tbpo_mismatch_weight(prox, rollout, jnp.ones((1, 2)), cap=5.0), [np.e], atol=1e-5)
    value, _ = tbpo_one([0.001, 0.0], -1.0, rollout_gap=(0.5, 1.5))
    np.testing.assert_allclose(value, 2.0 * 1.000500, atol=1e-6)


def test_tbpo_positive_clipped_case_t4():
    value, grad = tbpo_one([0.002, 0.0], 1.0)
    np.testing.assert_allclose(value, -1.0004, atol=1e-6)
    assert float(jnp.abs(grad).max()) == 0.0


def test_tbpo_weight_mode_ratio_applies_band_to_weighted_ratio():
    logp = jnp.array([[0.0, 0.0]])
    rollout = -jnp.array([[0.0004, 0.0004]])  # w = e^0.0004: inside the band only as a ratio factor
    out_loss = obj.tbpo_loss(logp, jnp.zeros((1, 2)), rollout, jnp.array([-1.0]), jnp.ones((1, 2)))
    out_ratio = obj.tbpo_loss(logp, jnp.zeros((1, 2)), rollout, jnp.array([-1.0]), jnp.ones((1, 2)),
                              weight_mode="ratio", neg_clip_high=3e-4)
    np.testing.assert_allclose(out_loss.loss, np.exp(0.0004), atol=1e-6)
    assert float(out_ratio.loss) == 0.0


# ---- gradients vs central finite differences in float64 ----

def random_batch(seed, b=3, t=5, scale=0.1):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.5, 2.0, (b, t))
    logp = old + scale * rng.normal(size=(b, t))
    mask = (rng.uniform(size=(b, t)) > 0.2).astype(np.float64)
    mask[:, 0] = 1.0
    adv = rng.normal(size=(b,))
    return logp, old, mask, adv


LOSSES = {
    "ppo": lambda lp, old, m, a, aux: obj.ppo_clip_loss(lp, old, a, m),
    "ppo_seq": lambda lp, old, m, a, aux: obj.ppo_clip_loss(lp, old, a, m, loss_agg_mode="seq-mean-token-mean"),
    "drgrpo": lambda lp, old, m, a, aux: obj.ppo_clip_loss(lp, old, a, m, loss_agg_mode="seq-mean-token-sum-norm"),
    "dual_clip": lambda lp, old, m, a, aux: obj.dual_clip_loss(lp, old, a, m, clip_ratio_c=1.05),
    "dapo": lambda lp, old, m, a, aux: obj.dapo_loss(lp, old, a, m),
    "gspo": lambda lp, old, m, a, aux: obj.gspo_loss(lp, old, a, m, clip_low=0.2, clip_high=0.2),
    "tbpo": lambda lp, old, m, a, aux: obj.tbpo_loss(lp, old, old + 0.1 * aux, a, m, clip_low=0.3,
                                                     clip_high=0.3, neg_clip_low=0.3, neg_clip_high=0.3),
    "kl_k3": lambda lp, old, m, a, aux: obj.kl_penalty(lp, old + aux, m, coef=0.5),
    "kl_k2": lambda lp, old, m, a, aux: obj.kl_penalty(lp, old + aux, m, kind="k2"),
    "vanilla": lambda lp, old, m, a, aux: obj.vanilla_pg_loss(lp, a, m),
    "opd": lambda lp, old, m, a, aux: obj.opd_loss(lp, old, old + aux, m, kl_coef=0.5),
    "opd_clipped": lambda lp, old, m, a, aux: obj.opd_loss(lp, old, old + aux, m, clip=0.2),
    "value": lambda lp, old, m, a, aux: obj.value_loss(lp, old, old + aux, m, clip=0.05),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_matches_finite_differences_float64(name):
    with jax.enable_x64(True):
        logp, old, mask, adv = (jnp.asarray(x) for x in random_batch(1))
        aux = jnp.asarray(np.random.default_rng(2).normal(size=logp.shape))
        f = lambda lp: LOSSES[name](lp, old, mask, adv, aux).loss
        grad = jax.grad(f)(logp)
        direction = jnp.asarray(np.random.default_rng(3).normal(size=logp.shape))
        h = 1e-6
        fd = (f(logp + h * direction) - f(logp - h * direction)) / (2 * h)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-5, atol=1e-8)


# ---- invariants ----

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_tokens_do_not_change_loss_or_gradient(name):
    logp, old, mask, adv = (jnp.asarray(x, jnp.float32) for x in random_batch(4))
    aux = jnp.asarray(np.random.default_rng(5).normal(size=logp.shape), jnp.float32)
    junk = jnp.asarray(np.random.default_rng(6).normal(size=logp.shape) * 5, jnp.float32)
    f = lambda lp, o, x: LOSSES[name](lp, o, mask, adv, x).loss
    v1, g1 = jax.value_and_grad(f)(logp, old, aux)
    moved = lambda x: jnp.where(mask > 0, x, x + junk)
    v2, g2 = jax.value_and_grad(f)(moved(logp), moved(old), moved(aux))
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1 * mask, g2 * mask, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(g2 * (1 - mask)).max()) == 0.0


@pytest.mark.parametrize("name", ["ppo", "dual_clip", "dapo", "gspo", "tbpo_in_band"])
def test_at_ratio_one_clipped_gradient_equals_vanilla_policy_gradient(name):
    logp, _, mask, adv = (jnp.asarray(x, jnp.float32) for x in random_batch(7))
    old = logp
    fns = {"ppo": lambda lp: obj.ppo_clip_loss(lp, old, adv, mask).loss,
           "dual_clip": lambda lp: obj.dual_clip_loss(lp, old, adv, mask).loss,
           "dapo": lambda lp: obj.dapo_loss(lp, old, adv, mask).loss,
           "gspo": lambda lp: obj.gspo_loss(lp, old, adv, mask).loss,
           "tbpo_in_band": lambda lp: obj.tbpo_loss(lp, old, old, adv, mask).loss}
    agg = "seq-mean-token-mean" if name in ("gspo", "tbpo_in_band") else "token-mean"
    vanilla = jax.grad(lambda lp: obj.vanilla_pg_loss(lp, adv, mask, loss_agg_mode=agg).loss)(logp)
    np.testing.assert_allclose(jax.grad(fns[name])(logp), vanilla, rtol=1e-5, atol=1e-7)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000))
def test_permuting_the_batch_keeps_the_loss_and_permutes_gradients(seed):
    logp, old, mask, adv = (jnp.asarray(x, jnp.float32) for x in random_batch(seed))
    perm = np.random.default_rng(seed).permutation(logp.shape[0])
    for fn in (obj.ppo_clip_loss, obj.gspo_loss):
        v1, g1 = jax.value_and_grad(lambda lp: fn(lp, old, adv, mask).loss)(logp)
        v2, g2 = jax.value_and_grad(lambda lp: fn(lp, old[perm], adv[perm], mask[perm]).loss)(logp[perm])
        np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g1[perm], g2, rtol=1e-5, atol=1e-7)


def test_jit_and_vmap_match_eager():
    batches = [random_batch(s) for s in (10, 11)]
    stacked = [jnp.asarray(np.stack(x), jnp.float32) for x in zip(*batches)]
    def loss(lp, old, m, a):
        return obj.tbpo_loss(lp, old, old - 0.01, a, m).loss + obj.ppo_clip_loss(lp, old, a, m).loss
    eager = jnp.stack([loss(*(jnp.asarray(x, jnp.float32) for x in b)) for b in batches])
    np.testing.assert_allclose(jax.jit(jax.vmap(loss))(*stacked), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(loss)(*stacked), eager, rtol=1e-6)


def test_value_loss_clips_like_ppo():
    values = jnp.array([[1.0, 0.0]])
    out = obj.value_loss(values, jnp.array([[0.5, 0.0]]), jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    # V_clip = 0.7: max((1-2)^2, (0.7-2)^2) = 1.69
    np.testing.assert_allclose(out.loss, 0.5 * 1.69, atol=1e-6)
    assert float(out.metrics["vf_clipfrac"]) == 1.0


def test_bad_shapes_name_the_array():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"old_logp must be \[B, T\]"):
        obj.ppo_clip_loss(z, jnp.zeros((2, 4)), jnp.zeros(2), z)
    with pytest.raises(ValueError, match="advantages must be"):
        obj.ppo_clip_loss(z, z, jnp.zeros(3), z)
    with pytest.raises(ValueError, match="rollout_logp"):
        obj.tbpo_loss(z, z, jnp.zeros((3, 3)), jnp.zeros(2), z)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        obj.ppo_clip_loss(z, z, jnp.zeros(2), z, dual_clip=0.5)
