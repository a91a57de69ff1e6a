"""On-policy distillation losses: OPD (sampled, full-vocab and top-k reverse KL), AOPD and SDAR.

The student samples the tokens; the teacher scores them. `teacher_logp [B, T]` is the teacher's
log-prob of the student-sampled token; teacher quantities are always stop-gradient-ed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.aggregation import aggregate, token_mean
from jaxrl_llm.objectives.core import (LossOutput, check_shape, check_token_inputs, clamped_ratio,
                                       masked_mean)
from jaxrl_llm.objectives.policy_losses import clipped_token_loss

Array = jax.Array


def opd_advantages(teacher_logp: Array, old_logp: Array) -> Array:
    """OPD per-token advantage A_t = sg(teacher_logp - old_logp) (= minus the sampled reverse KL). [B, T]."""
    check_token_inputs(teacher_logp=teacher_logp, old_logp=old_logp)
    return jax.lax.stop_gradient(teacher_logp - old_logp)


def opd_loss(logp: Array, old_logp: Array, teacher_logp: Array, mask: Array, *, kl_coef: float = 1.0,
             clip: float | None = None, loss_agg_mode: str = "token-mean") -> LossOutput:
    """Sampled-token on-policy distillation (GKD 2306.13649 / MiniLLM 2306.08543).

    loss = -kl_coef * aggregate(rho_t A_t) with A_t = sg(teacher_logp - old_logp), rho = exp(logp -
    old_logp); `clip=eps` uses the PPO-clipped surrogate instead. All inputs [B, T].
    Metrics: reverse_kl (mean of -A_t), frac_positive (share of tokens with A_t > 0).
    """
    check_token_inputs(logp=logp, old_logp=old_logp, teacher_logp=teacher_logp, mask=mask)
    adv = opd_advantages(teacher_logp, old_logp)
    ratio, _ = clamped_ratio(logp, jax.lax.stop_gradient(old_logp))
    if clip is None:
        per_token = -ratio * adv
    else:
        per_token, _, _ = clipped_token_loss(ratio, adv, clip_low=clip, clip_high=clip)
    maskf = mask.astype(logp.dtype)
    metrics = {"reverse_kl": masked_mean(-adv, maskf),
               "frac_positive": masked_mean((adv > 0).astype(logp.dtype), maskf)}
    return LossOutput(kl_coef * aggregate(per_token, maskf, loss_agg_mode), metrics)


def _upcast(x: Array) -> Array:
    """At least fp32 (bf16 logits lose too much in a softmax), float64 kept when enabled."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _log_softmax32(logits: Array) -> Array:
    return jax.nn.log_softmax(_upcast(logits), axis=-1)


def full_reverse_kl(student_logits: Array, teacher_logits: Array) -> Array:
    """Per-token KL(pi_student || pi_teacher) over the full vocabulary. [B, T, V] x2 -> [B, T]."""
    check_shape("teacher_logits", teacher_logits, tuple(student_logits.shape), "[B, T, V] like student_logits")
    s = _log_softmax32(student_logits)
    t = jax.lax.stop_gradient(_log_softmax32(teacher_logits))
    return jnp.sum(jnp.exp(s) * (s - t), axis=-1)


def full_forward_kl(student_logits: Array, teacher_logits: Array) -> Array:
    """Per-token KL(pi_teacher || pi_student) over the full vocabulary. [B, T, V] x2 -> [B, T]."""
    check_shape("teacher_logits", teacher_logits, tuple(student_logits.shape), "[B, T, V] like student_logits")
    s = _log_softmax32(student_logits)
    t = jax.lax.stop_gradient(_log_softmax32(teacher_logits))
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def _topk_pair(student_logits: Array, teacher_topk_idx: Array, teacher_topk_logp: Array):
    """Student and teacher log-probs renormalised on the teacher's top-k support: ([B,T,k], [B,T,k])."""
    b, t = student_logits.shape[:2]
    check_shape("teacher_topk_idx", teacher_topk_idx, (b, t, None), f"[B, T, k] with B={b}, T={t}")
    check_shape("teacher_topk_logp", teacher_topk_logp, tuple(teacher_topk_idx.shape), "[B, T, k] like teacher_topk_idx")
    s_k = jnp.take_along_axis(_upcast(student_logits), teacher_topk_idx.astype(jnp.int32), axis=-1)
    s_k = jax.nn.log_softmax(s_k, axis=-1)
    t_k = jax.lax.stop_gradient(jax.nn.log_softmax(_upcast(teacher_topk_logp), axis=-1))
    return s_k, t_k


def topk_reverse_kl(student_logits: Array, teacher_topk_idx: Array, teacher_topk_logp: Array) -> Array:
    """Reverse KL on the teacher's top-k support, both distributions renormalised there. -> [B, T]."""
    s_k, t_k = _topk_pair(student_logits, teacher_topk_idx, teacher_topk_logp)
    return jnp.sum(jnp.exp(s_k) * (s_k - t_k), axis=-1)


def topk_forward_kl(student_logits: Array, teacher_topk_idx: Array, teacher_topk_logp: Array) -> Array:
    """Forward KL on the teacher's top-k support, both distributions renormalised there. -> [B, T]."""
    s_k, t_k = _topk_pair(student_logits, teacher_topk_idx, teacher_topk_logp)
    return jnp.sum(jnp.exp(t_k) * (t_k - s_k), axis=-1)


def opd_full_loss(student_logits: Array, mask: Array, *, teacher_logits: Array | None = None,
                  teacher_topk_idx: Array | None = None, teacher_topk_logp: Array | None = None,
                  kl_coef: float = 1.0, loss_agg_mode: str = "token-mean") -> LossOutput:
    """Distribution-level OPD: kl_coef * aggregate(KL(student || teacher)) per token.

    Give `teacher_logits [B, T, V]` for the full-vocab form, or `teacher_topk_idx/logp [B, T, k]`
    for the top-k form. student_logits: [B, T, V]; mask: [B, T]. Metric: reverse_kl.
    """
    kl = _distribution_kl(student_logits, teacher_logits, teacher_topk_idx, teacher_topk_logp, "reverse")
    check_token_inputs(kl=kl, mask=mask)
    value = aggregate(kl, mask.astype(kl.dtype), loss_agg_mode)
    return LossOutput(kl_coef * value, {"reverse_kl": value})


def _distribution_kl(student_logits, teacher_logits, topk_idx, topk_logp, direction: str) -> Array:
    if direction not in ("forward", "reverse"):
        raise ValueError(f"kl_direction must be 'forward' or 'reverse'; got {direction!r}")
    if teacher_logits is not None:
        return (full_forward_kl if direction == "forward" else full_reverse_kl)(student_logits, teacher_logits)
    if topk_idx is None or topk_logp is None:
        raise ValueError("need teacher_logits [B, T, V] or both teacher_topk_idx and teacher_topk_logp [B, T, k]")
    return (topk_forward_kl if direction == "forward" else topk_reverse_kl)(student_logits, topk_idx, topk_logp)


def aopd_loss(logp: Array, old_logp: Array, teacher_logp: Array, mask: Array, student_logits: Array, *,
              teacher_logits: Array | None = None, teacher_topk_idx: Array | None = None,
              teacher_topk_logp: Array | None = None, clip: float = 0.2, beta_f: float = 1.0,
              kl_direction: str = "forward") -> LossOutput:
    """AOPD (arXiv 2605.06387): PG where the teacher endorses the token, distribution KL where it does not.

    A_t = sg(teacher_logp - old_logp), G_t = 1[A_t > 0];
    l_t = G_t * (-min(rho A, clip(rho) A)) + (1 - G_t) * beta_f * KL_t, token-mean.
    KL_t is the forward KL(teacher || student) on the full vocabulary (`teacher_logits`) or on the
    teacher's top-k support (`teacher_topk_idx/logp`, k = 32 suggested). RECONSTRUCTED: beta_f = 1,
    forward direction (`kl_direction`), the clip on the PG branch, and top-k renormalisation.
    logp, old_logp, teacher_logp, mask: [B, T]; student_logits: [B, T, V] (grad flows through both
    logp and student_logits). Metrics: frac_positive, pg_loss, fkl_loss, entropy.
    """
    b, t = check_token_inputs(logp=logp, old_logp=old_logp, teacher_logp=teacher_logp, mask=mask)
    check_shape("student_logits", student_logits, (b, t, None), f"[B, T, V] with B={b}, T={t}")
    adv = opd_advantages(teacher_logp, old_logp)
    positive = adv > 0
    ratio, _ = clamped_ratio(logp, jax.lax.stop_gradient(old_logp))
    pg, _, _ = clipped_token_loss(ratio, adv, clip_low=clip, clip_high=clip)
    kl = _distribution_kl(student_logits, teacher_logits, teacher_topk_idx, teacher_topk_logp, kl_direction)
    # The KL is only evaluated where it is used, so a NaN/inf elsewhere cannot leak into the gradient.
    kl = jnp.where(positive, 0.0, kl)
    per_token = jnp.where(positive, pg, beta_f * kl)
    maskf = mask.astype(logp.dtype)
    s = _log_softmax32(jax.lax.stop_gradient(student_logits))
    entropy = -jnp.sum(jnp.exp(s) * s, axis=-1)
    metrics = {
        "frac_positive": masked_mean(positive.astype(logp.dtype), maskf),
        "pg_loss": token_mean(jnp.where(positive, pg, 0.0), maskf),
        "fkl_loss": token_mean(beta_f * kl, maskf),
        "entropy": masked_mean(entropy, maskf),
    }
    return LossOutput(token_mean(per_token, maskf), metrics)


def sdar_gate(logp: Array, teacher_logp: Array, *, gate_beta: float = 5.0) -> Array:
    """SDAR gate g_t = sg(sigmoid(beta (teacher_logp - sg(logp)))). [B, T]."""
    gap = jax.lax.stop_gradient(teacher_logp - logp)
    return jax.nn.sigmoid(gate_beta * gap)


SDAR_GATES = ("sigmoid", "none")


def sdar_warmdown(coef: float, step, warmdown_steps: int):
    """SDAR's optional warm-down (SkillSD variant): `coef * (1 - step / warmdown_steps)` before
    `warmdown_steps`, 0 from then on; `warmdown_steps = 0` keeps `coef` (no warm-down).

    Example: `sdar_warmdown(0.01, 25, 100) == 0.0075`.
    """
    if warmdown_steps <= 0:
        return coef
    return coef * jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / warmdown_steps, 0.0, 1.0)


def sdar_aux_loss(logp: Array, teacher_logp: Array, mask: Array, *, gate_beta: float = 5.0,
                  coef: float = 1.0, gate: str = "sigmoid", row_scale: Array | None = None) -> LossOutput:
    """SDAR auxiliary self-distillation loss (arXiv 2605.15155): coef * token-mean(w_t (teacher - logp)).

    gate="sigmoid" (SDAR): w_t = g_t = sg(sigmoid(beta gap_t)), gap_t = teacher_logp - sg(logp).
    The gradient flows only through logp (d/dlogp_t = -coef w_t / N): the student's sampled token
    is pushed up strongly where the skill-conditioned teacher endorses it and hardly where it
    rejects it.
    gate="none" (naive GRPO + OPSD, the paper's unstable baseline): w_t = sg(gap_t), the sampled
    reverse-KL signal itself, so a teacher rejection (gap < 0) pushes the token down as hard as an
    endorsement pushes it up; `gate_beta` is unused. (w_t = 1 would not be "ungated OPSD": its
    gradient -1/N carries no teacher information.)
    row_scale: optional [B] per-row weight of the term (the warm-down's coef_t / coef, `sdar_warmdown`).
    logp, teacher_logp, mask: [B, T]. Metrics: gate_mean (mean w_t), gate_active_ratio (w > 0.5
    for the sigmoid, w > 0 ungated: tokens the teacher endorses), teacher_gap_mean, loss (before coef).
    """
    if gate not in SDAR_GATES:
        raise ValueError(f"gate must be one of {SDAR_GATES}; got {gate!r}")
    check_token_inputs(logp=logp, teacher_logp=teacher_logp, mask=mask)
    teacher_logp = jax.lax.stop_gradient(teacher_logp)
    gap = jax.lax.stop_gradient(teacher_logp - logp)
    weight = sdar_gate(logp, teacher_logp, gate_beta=gate_beta) if gate == "sigmoid" else gap
    maskf = mask.astype(logp.dtype)
    scaled = weight if row_scale is None else weight * jax.lax.stop_gradient(row_scale)[:, None]
    value = token_mean(scaled * (teacher_logp - logp), maskf)
    metrics = {
        "gate_mean": masked_mean(weight, maskf),
        "gate_active_ratio": masked_mean((weight > (0.5 if gate == "sigmoid" else 0.0)).astype(logp.dtype), maskf),
        "teacher_gap_mean": masked_mean(gap, maskf),
        "loss": value,
    }
    return LossOutput(coef * value, metrics)
