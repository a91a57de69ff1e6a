"""Distillation: sampled OPD, full/top-k KL, AOPD, SDAR auxiliary loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj

TEACHER_P = np.array([0.7, 0.2, 0.1])
STUDENT_P = np.array([0.5, 0.3, 0.2])


def test_opd_case_b8():
    teacher = jnp.array([[-0.5, -2.0]])
    student = jnp.array([[-1.0, -1.0]])
    np.testing.assert_allclose(obj.opd_advantages(teacher, student), [[0.5, -1.0]], atol=1e-6)
    out = obj.opd_loss(student, student, teacher, jnp.ones((1, 2)))
    np.testing.assert_allclose(out.metrics["reverse_kl"], 0.25, atol=1e-6)
    np.testing.assert_allclose(out.metrics["frac_positive"], 0.5, atol=1e-6)
    np.testing.assert_allclose(out.loss, -(0.5 - 1.0) / 2, atol=1e-6)
    grad = jax.grad(lambda lp: obj.opd_loss(lp, student, teacher, jnp.ones((1, 2)), kl_coef=2.0).loss)(student)
    np.testing.assert_allclose(grad, [[-0.5, 1.0]], atol=1e-6)  # -coef * A_t / N at ratio 1


def a1_inputs():
    student_logits = jnp.log(jnp.asarray(np.stack([STUDENT_P, STUDENT_P])))[None]  # [1, 2, 3]
    teacher_logits = jnp.log(jnp.asarray(np.stack([TEACHER_P, TEACHER_P])))[None]
    tokens = jnp.array([[0, 2]])
    logp = jnp.take_along_axis(jax.nn.log_softmax(student_logits), tokens[..., None], -1)[..., 0]
    teacher_logp = jnp.take_along_axis(jax.nn.log_softmax(teacher_logits), tokens[..., None], -1)[..., 0]
    return student_logits, teacher_logits, logp, teacher_logp


def test_full_kls_match_hand_values():
    s, t, _, _ = a1_inputs()
    np.testing.assert_allclose(obj.full_forward_kl(s, t)[0, 0], 0.085123, atol=1e-6)
    np.testing.assert_allclose(obj.full_reverse_kl(s, t)[0, 0], 0.092033, atol=1e-6)
    out = obj.opd_full_loss(s, jnp.ones((1, 2)), teacher_logits=t)
    np.testing.assert_allclose(out.loss, 0.092033, atol=1e-6)


def test_aopd_case_a1():
    s, t, logp, teacher_logp = a1_inputs()
    np.testing.assert_allclose(teacher_logp - logp, [[0.336472, -0.693147]], atol=1e-6)
    out = obj.aopd_loss(logp, logp, teacher_logp, jnp.ones((1, 2)), s, teacher_logits=t)
    np.testing.assert_allclose(out.loss, -0.125675, atol=1e-6)
    np.testing.assert_allclose(out.metrics["pg_loss"], -0.336472 / 2, atol=1e-6)
    np.testing.assert_allclose(out.metrics["fkl_loss"], 0.085123 / 2, atol=1e-6)
    np.testing.assert_allclose(out.metrics["frac_positive"], 0.5, atol=1e-6)


def test_aopd_topk_with_full_support_equals_full_kl():
    s, t, logp, teacher_logp = a1_inputs()
    idx = jnp.broadcast_to(jnp.array([2, 0, 1]), (1, 2, 3))
    topk_logp = jnp.take_along_axis(jax.nn.log_softmax(t), idx, -1)
    full = obj.aopd_loss(logp, logp, teacher_logp, jnp.ones((1, 2)), s, teacher_logits=t)
    topk = obj.aopd_loss(logp, logp, teacher_logp, jnp.ones((1, 2)), s, teacher_topk_idx=idx,
                         teacher_topk_logp=topk_logp)
    np.testing.assert_allclose(topk.loss, full.loss, atol=1e-6)
    np.testing.assert_allclose(obj.topk_reverse_kl(s, idx, topk_logp), obj.full_reverse_kl(s, t), atol=1e-6)


def test_aopd_topk_renormalises_on_the_support():
    s, t, _, _ = a1_inputs()
    idx = jnp.broadcast_to(jnp.array([0, 1]), (1, 2, 2))
    topk_logp = jnp.take_along_axis(jax.nn.log_softmax(t), idx, -1)
    pt, ps = np.array([0.7, 0.2]) / 0.9, np.array([0.5, 0.3]) / 0.8
    np.testing.assert_allclose(obj.topk_forward_kl(s, idx, topk_logp)[0, 0], np.sum(pt * np.log(pt / ps)), atol=1e-6)


def test_aopd_and_sdar_gradients_match_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        logits = jnp.asarray(rng.normal(size=(2, 3, 5)))
        teacher = logits + 0.5 * jnp.asarray(rng.normal(size=(2, 3, 5)))
        tokens = jnp.asarray(rng.integers(0, 5, (2, 3)))
        mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
        sampled = lambda x: jnp.take_along_axis(jax.nn.log_softmax(x), tokens[..., None], -1)[..., 0]
        old, t_logp = sampled(logits), sampled(teacher)
        x = logits + 0.05 * jnp.asarray(rng.normal(size=logits.shape))
        # The SDAR gate is a stop-gradient weight: the reference freezes it at x.
        gate = obj.sdar_gate(sampled(x), t_logp)
        positive = np.asarray((t_logp - old) > 0)
        assert positive.any() and (~positive).any()  # both AOPD branches are exercised

        def f(y, frozen):
            aux = (obj.token_mean(gate * (t_logp - sampled(y)), mask) if frozen
                   else obj.sdar_aux_loss(sampled(y), t_logp, mask).loss)
            return obj.aopd_loss(sampled(y), old, t_logp, mask, y, teacher_logits=teacher).loss + aux

        d = jnp.asarray(rng.normal(size=logits.shape))
        fd = (f(x + 1e-6 * d, True) - f(x - 1e-6 * d, True)) / 2e-6
        np.testing.assert_allclose(jnp.sum(jax.grad(f)(x, False) * d), fd, rtol=1e-5)


def test_sdar_case_s1():
    logp = jnp.log(jnp.array([[0.5, 0.5]]))
    teacher = jnp.log(jnp.array([[0.8, 0.2]]))
    mask = jnp.ones((1, 2))
    np.testing.assert_allclose(teacher - logp, [[0.470004, -0.916291]], atol=1e-6)
    np.testing.assert_allclose(obj.sdar_gate(logp, teacher, gate_beta=5.0), [[0.912936, 0.010136]], atol=1e-6)
    value, grad = jax.value_and_grad(lambda lp: obj.sdar_aux_loss(lp, teacher, mask).loss)(logp)
    np.testing.assert_allclose(value, 0.209898, atol=1e-6)
    np.testing.assert_allclose(grad, [[-0.456468, -0.005068]], atol=1e-6)
    out10 = obj.sdar_aux_loss(logp, teacher, mask, gate_beta=10.0)
    np.testing.assert_allclose(out10.loss, 0.232836, atol=1e-6)
    np.testing.assert_allclose(obj.sdar_gate(logp, teacher, gate_beta=10.0), [[0.990987, 0.000105]], atol=1e-6)
    assert float(out10.metrics["gate_active_ratio"]) == 0.5


def test_sdar_zero_gap_case_s2():
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    mask = jnp.ones((1, 3))
    value, grad = jax.value_and_grad(lambda lp: obj.sdar_aux_loss(lp, logp, mask).loss)(logp)
    assert float(value) == 0.0
    np.testing.assert_allclose(grad, [[-0.5 / 3] * 3], atol=1e-7)


def test_registry_sdar_composes_grpo_kl_and_aux():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(-rng.uniform(0.5, 2, (2, 3)), jnp.float32)
    batch = {"logp": logp, "old_logp": logp, "ref_logp": logp - 0.1, "teacher_logp": logp + 0.2,
             "mask": jnp.ones((2, 3)), "advantages": jnp.array([1.0, -1.0])}
    out = obj.get_objective("sdar")(batch, kl_coef=0.01, sdar_coef=0.1)
    expected = (obj.dual_clip_loss(logp, logp, batch["advantages"], batch["mask"]).loss
                + obj.kl_penalty(logp, logp - 0.1, batch["mask"], coef=0.01).loss
                + obj.sdar_aux_loss(logp, logp + 0.2, batch["mask"], coef=0.1).loss)
    np.testing.assert_allclose(out.loss, expected, rtol=1e-6)
    assert {"sdar/gate_mean", "ref/kl", "pg/clipfrac", "pg/kl"} <= set(out.metrics)


def test_masked_tokens_do_not_change_distillation_losses():
    s, t, logp, teacher_logp = a1_inputs()
    mask = jnp.array([[1.0, 0.0]])
    junk = jnp.array([[0.0, 3.0]])
    for fn in (lambda lp, tl: obj.opd_loss(lp, lp, tl, mask).loss,
               lambda lp, tl: obj.sdar_aux_loss(lp, tl, mask).loss,
               lambda lp, tl: obj.aopd_loss(lp, lp, tl, mask, s, teacher_logits=t).loss):
        np.testing.assert_allclose(fn(logp, teacher_logp), fn(logp + junk, teacher_logp - junk), atol=1e-6)


def test_bad_input_names_the_array():
    s, t, logp, teacher_logp = a1_inputs()
    with pytest.raises(ValueError, match="teacher_logits must be"):
        obj.full_reverse_kl(s, t[:, :, :2])
    with pytest.raises(ValueError, match="student_logits must be"):
        obj.aopd_loss(logp, logp, teacher_logp, jnp.ones((1, 2)), s[:, :1], teacher_logits=t)
    with pytest.raises(ValueError, match="need teacher_logits"):
        obj.aopd_loss(logp, logp, teacher_logp, jnp.ones((1, 2)), s)
    with pytest.raises(ValueError, match="teacher_logp must be"):
        obj.sdar_aux_loss(logp, teacher_logp[:, :1], jnp.ones((1, 2)))
