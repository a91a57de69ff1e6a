"""Name -> objective / advantage-estimator lookup for configs, with a uniform call signature.

Objectives: `objective(batch, **hparams) -> LossOutput`, where `batch` is any mapping of arrays
with the keys below (only the ones the method needs):

    logp [B, T]            current-policy log-prob of the sampled token (carries the gradient)
    old_logp [B, T]        behaviour / proximal log-prob
    rollout_logp [B, T]    sampler log-prob (TBPO)
    ref_logp [B, T]        reference log-prob (KL terms)
    teacher_logp [B, T]    teacher log-prob of the sampled token (OPD, AOPD, SDAR)
    mask [B, T]            1 on response tokens
    advantages [B] | [B, T]
    entropy [B, T]         per-token entropy (optional entropy bonus)
    student_logits [B, T, V], teacher_logits [B, T, V] or teacher_topk_idx/logp [B, T, k] (AOPD, OPD-full)
    values, old_values, returns [B, T] (PPO value loss); step_id [B, T], step_ok [B, K], rewards,
    group_ids (BCPG-NSA); policy/ref chosen/rejected sequence log-probs [N] (DPO)

Advantage estimators: `estimator(batch, **hparams) -> AdvantageOutput(advantages, returns, metrics)`
with `rewards [B]` (or `[B, D]` for RDPO), `group_ids [B]`, `cond [B]` (SkillC),
`token_rewards/values/mask [B, T]` (GAE). Group estimators take `num_groups` (static int).

Policy objectives accept the composable extras `kl_coef` (with `ref_logp`, `kl_kind`) and
`entropy_coef` (with `entropy`); the raw per-method functions stay importable for direct use.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax

from jaxrl_llm.objectives import advantages as adv_lib
from jaxrl_llm.objectives import distillation, policy_losses, preference, rdpo, skillc, tbpo
from jaxrl_llm.objectives.core import LossOutput
from jaxrl_llm.objectives.regularizers import compose, entropy_bonus, kl_penalty

Array = jax.Array
Objective = Callable[..., LossOutput]

_OBJECTIVES: dict[str, Objective] = {}
_ADVANTAGES: dict[str, Callable[..., Any]] = {}


class AdvantageOutput(NamedTuple):
    """Advantages `[B]` or `[B, T]`, returns `[B, T]` (GAE only, else None) and scalar metrics."""

    advantages: Array
    returns: Array | None
    metrics: dict[str, Array]


def _register(table: dict, kind: str, name: str, overwrite: bool):
    def decorator(fn):
        if name in table and not overwrite:
            raise ValueError(f"{kind} {name!r} is already registered (pass overwrite=True to replace it)")
        table[name] = fn
        return fn

    return decorator


def register_objective(name: str, *, overwrite: bool = False):
    """Decorator: `@register_objective("my_loss")` on `fn(batch, **hparams) -> LossOutput`."""
    return _register(_OBJECTIVES, "objective", name, overwrite)


def register_advantage(name: str, *, overwrite: bool = False):
    """Decorator: `@register_advantage("my_adv")` on `fn(batch, **hparams) -> AdvantageOutput`."""
    return _register(_ADVANTAGES, "advantage estimator", name, overwrite)


def get_objective(name: str) -> Objective:
    """Look up a registered objective by name."""
    if name not in _OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; registered: {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name]


def get_advantage(name: str) -> Callable[..., AdvantageOutput]:
    """Look up a registered advantage estimator by name."""
    if name not in _ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {sorted(_ADVANTAGES)}")
    return _ADVANTAGES[name]


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def list_advantages() -> list[str]:
    return sorted(_ADVANTAGES)


def _need(batch: Mapping[str, Any], method: str, *keys: str) -> list[Any]:
    missing = [k for k in keys if batch.get(k) is None]
    if missing:
        raise KeyError(f"objective {method!r} needs batch keys {missing}; got {sorted(batch)}")
    return [batch[k] for k in keys]


def _with_extras(method: str, main: LossOutput, batch, *, kl_coef: float, kl_kind: str,
                 entropy_coef: float) -> LossOutput:
    """Add the optional KL-to-reference and entropy terms to a policy loss."""
    terms = {"pg": main}
    if kl_coef:
        logp, ref, mask = _need(batch, method, "logp", "ref_logp", "mask")
        terms["kl"] = kl_penalty(logp, ref, mask, coef=kl_coef, kind=kl_kind)
    if entropy_coef:
        ent, mask = _need(batch, method, "entropy", "mask")
        terms["entropy"] = entropy_bonus(ent, mask, coef=entropy_coef)
    return compose(**terms)


def _policy_objective(name: str, fn: Callable[..., LossOutput], **defaults):
    @register_objective(name)
    def objective(batch, *, kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0, **hparams):
        logp, old, adv, mask = _need(batch, name, "logp", "old_logp", "advantages", "mask")
        main = fn(logp, old, adv, mask, **{**defaults, **hparams})
        return _with_extras(name, main, batch, kl_coef=kl_coef, kl_kind=kl_kind, entropy_coef=entropy_coef)

    objective.__doc__ = f"Registry form of `{fn.__name__}` (defaults {defaults}) plus optional KL/entropy terms."
    return objective


_policy_objective("ppo", policy_losses.ppo_clip_loss)
_policy_objective("grpo", policy_losses.ppo_clip_loss)
_policy_objective("drgrpo", policy_losses.ppo_clip_loss, loss_agg_mode="seq-mean-token-sum-norm")
_policy_objective("dual_clip", policy_losses.dual_clip_loss)
_policy_objective("dapo", policy_losses.dapo_loss)
_policy_objective("gspo", policy_losses.gspo_loss)


@register_objective("tbpo")
def _tbpo(batch, *, kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0, **hparams):
    logp, old, roll, adv, mask = _need(batch, "tbpo", "logp", "old_logp", "rollout_logp", "advantages", "mask")
    main = tbpo.tbpo_loss(logp, old, roll, adv, mask, **hparams)
    return _with_extras("tbpo", main, batch, kl_coef=kl_coef, kl_kind=kl_kind, entropy_coef=entropy_coef)


@register_objective("ppo_value")
def _ppo_value(batch, **hparams):
    return policy_losses.value_loss(*_need(batch, "ppo_value", "values", "old_values", "returns", "mask"), **hparams)


@register_objective("sdar")
def _sdar(batch, *, clip_low: float = 0.2, clip_ratio_c: float = 3.0, kl_coef: float = 0.01,
          kl_kind: str = "k3", sdar_coef: float = 0.01, gate_beta: float = 5.0, entropy_coef: float = 0.0):
    """GRPO (dual-clip, token-mean) + kl_coef KL_k3 + sdar_coef * SDAR auxiliary (released-script defaults)."""
    logp, old, adv, mask, teacher = _need(batch, "sdar", "logp", "old_logp", "advantages", "mask", "teacher_logp")
    pg = policy_losses.dual_clip_loss(logp, old, adv, mask, clip_low=clip_low, clip_ratio_c=clip_ratio_c)
    terms = {"pg": pg, "sdar": distillation.sdar_aux_loss(logp, teacher, mask, gate_beta=gate_beta, coef=sdar_coef)}
    if kl_coef:
        terms["kl"] = kl_penalty(logp, _need(batch, "sdar", "ref_logp")[0], mask, coef=kl_coef, kind=kl_kind)
    if entropy_coef:
        terms["entropy"] = entropy_bonus(_need(batch, "sdar", "entropy")[0], mask, coef=entropy_coef)
    return compose(**terms)


@register_objective("opd")
def _opd(batch, **hparams):
    return distillation.opd_loss(*_need(batch, "opd", "logp", "old_logp", "teacher_logp", "mask"), **hparams)


@register_objective("opd_full")
def _opd_full(batch, **hparams):
    student, mask = _need(batch, "opd_full", "student_logits", "mask")
    return distillation.opd_full_loss(student, mask, teacher_logits=batch.get("teacher_logits"),
                                      teacher_topk_idx=batch.get("teacher_topk_idx"),
                                      teacher_topk_logp=batch.get("teacher_topk_logp"), **hparams)


@register_objective("aopd")
def _aopd(batch, **hparams):
    arrays = _need(batch, "aopd", "logp", "old_logp", "teacher_logp", "mask", "student_logits")
    return distillation.aopd_loss(*arrays, teacher_logits=batch.get("teacher_logits"),
                                  teacher_topk_idx=batch.get("teacher_topk_idx"),
                                  teacher_topk_logp=batch.get("teacher_topk_logp"), **hparams)


@register_objective("dpo")
def _dpo(batch, **hparams):
    keys = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
    return preference.dpo_loss(*_need(batch, "dpo", *keys), **hparams)


@register_objective("bcpg_nsa")
def _bcpg_nsa(batch, **hparams):
    keys = ("logp", "old_logp", "mask", "rewards", "group_ids", "step_id", "step_ok")
    return preference.bcpg_nsa_loss(*_need(batch, "bcpg_nsa", *keys), **hparams)


def _outcome(name: str, fn):
    @register_advantage(name)
    def estimator(batch, **hparams):
        rewards, groups = _need(batch, name, "rewards", "group_ids")
        return AdvantageOutput(fn(rewards, groups, **hparams), None, {})

    return estimator


_outcome("grpo", adv_lib.grpo_advantages)
_outcome("drgrpo", adv_lib.drgrpo_advantages)
_outcome("rloo", adv_lib.rloo_advantages)


@register_advantage("gae")
def _gae(batch, **hparams):
    adv, returns = adv_lib.gae_advantages(*_need(batch, "gae", "token_rewards", "values", "mask"), **hparams)
    return AdvantageOutput(adv, returns, {})


@register_advantage("rdpo")
def _rdpo(batch, **hparams):
    adv, metrics = rdpo.rdpo_advantages(*_need(batch, "rdpo", "rewards", "group_ids"), **hparams)
    return AdvantageOutput(adv, None, metrics)


@register_advantage("skillc")
def _skillc(batch, **hparams):
    adv, metrics = skillc.skillc_advantages(*_need(batch, "skillc", "rewards", "group_ids", "cond"), **hparams)
    return AdvantageOutput(adv, None, metrics)
