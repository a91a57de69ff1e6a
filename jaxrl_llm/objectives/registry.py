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

Every registered function carries a `Spec`: the batch fields it reads (`inputs`, alternatives in
`any_of`, fields needed only when a hyperparameter is non-zero in `when`), its hyperparameters with
their defaults (read from the signatures) and, for estimators, the reward shape it accepts. A
trainer checks a config against the spec before anything compiles (`check_hparams`,
`missing_inputs`). Metric names are standard across objectives: `pg/clipfrac`, `pg/kl` (mean
`old_logp - logp`, the approximate KL to the behaviour policy), `ref/kl` (KL to the reference),
`entropy/entropy`, `distill/...`, `value/...`, `sdar/...`, `<term>/loss` (see `docs/rl.md`).

Policy objectives accept the composable extras `kl_coef` (with `ref_logp`, `kl_kind`) and
`entropy_coef` (with `entropy`); the raw per-method functions stay importable for direct use.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax

from jaxrl_llm.objectives import advantages as adv_lib
from jaxrl_llm.objectives import distillation, policy_losses, preference, rdpo, skillc, tbpo
from jaxrl_llm.objectives.core import LossOutput
from jaxrl_llm.objectives.regularizers import compose, entropy_bonus, kl_penalty

Array = jax.Array
Objective = Callable[..., LossOutput]

REWARD_SHAPES = ("scalar", "vector", "any")
TRAINERS = ("rl", "dpo")


class AdvantageOutput(NamedTuple):
    """Advantages `[B]` or `[B, T]`, returns `[B, T]` (GAE only, else None) and scalar metrics."""

    advantages: Array
    returns: Array | None
    metrics: dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a registered objective or estimator reads and which hyperparameters it takes.

    inputs: batch fields always read; `None` = undeclared (checked only when the loss runs).
    any_of: groups of fields of which one whole group must be present.
    when: `(hyperparameter, fields)` pairs: the fields are read when that hyperparameter is non-zero.
    hparams: name -> default; `None` = any keyword is accepted.
    supplied: hyperparameters the trainer passes itself (e.g. `num_groups`); not for configs.
    choices: `(hyperparameter, allowed values)` pairs for the ones that take one of a few values.
    rewards: estimators only: `"scalar"` (`rewards [B]`), `"vector"` (`[B, R]`) or `"any"`.
    trainer: the command that trains it (`"rl"`, or `"dpo"` for preference objectives).
    """

    name: str
    kind: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...] | None = None
    any_of: tuple[tuple[str, ...], ...] = ()
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    hparams: Mapping[str, Any] | None = None
    supplied: tuple[str, ...] = ()
    choices: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    rewards: str = "any"
    trainer: str = "rl"

    def required_inputs(self, hparams: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """`inputs` plus the `when` fields whose hyperparameter is non-zero (given or default)."""
        given = dict(hparams or {})
        defaults = dict(self.hparams or {})
        out = list(self.inputs or ())
        for key, fields in self.when:
            if given.get(key, defaults.get(key)):
                out.extend(f for f in fields if f not in out)
        return tuple(out)

    def missing_inputs(self, available, hparams: Mapping[str, Any] | None = None) -> list[str]:
        """Fields this spec reads (with `hparams`) that are not in `available`, in reading order.

        For an unmet `any_of`, the first group's missing fields are listed.
        """
        available = set(available)
        missing = [f for f in self.required_inputs(hparams) if f not in available]
        if self.any_of and not any(set(group) <= available for group in self.any_of):
            missing.extend(f for f in self.any_of[0] if f not in available and f not in missing)
        return missing

    def check_hparams(self, hparams: Mapping[str, Any], where: str) -> None:
        """Raise `ValueError` naming `where.key` for a key this spec does not take, or a value outside
        its declared `choices`."""
        allowed = dict(self.choices)
        for key in hparams:
            if key in self.supplied:
                raise ValueError(f"{where}.{key} is set by the trainer for {self.kind} {self.name!r}; remove it")
            if self.hparams is not None and key not in self.hparams:
                raise ValueError(f"{where}.{key} is not a hyperparameter of {self.kind} {self.name!r}; "
                                 f"it takes {sorted(self.hparams)}")
            if key in allowed and hparams[key] not in allowed[key]:
                raise ValueError(f"{where}.{key} must be one of {allowed[key]} for {self.kind} {self.name!r}; "
                                 f"got {hparams[key]!r}")


_OBJECTIVES: dict[str, Spec] = {}
_ADVANTAGES: dict[str, Spec] = {}


def signature_hparams(*fns: Callable[..., Any], exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Keyword-only parameters (with defaults) of `fns`, merged; `None` if the first takes `**kwargs`
    and nothing else declares hyperparameters (then any keyword is accepted)."""
    out: dict[str, Any] = {}
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in exclude:
                out.setdefault(p.name, None if p.default is p.empty else p.default)
    first = inspect.signature(fns[0]).parameters.values()
    if len(fns) == 1 and any(p.kind is p.VAR_KEYWORD for p in first):
        return None
    return out


def _register(table: dict, kind: str, name: str, overwrite: bool, **spec_fields):
    def decorator(fn):
        if name in table and not overwrite:
            raise ValueError(f"{kind} {name!r} is already registered (pass overwrite=True to replace it)")
        fields = dict(spec_fields)
        if fields.get("hparams") is None:
            fields["hparams"] = signature_hparams(fn, exclude=tuple(fields.get("supplied", ())))
        if fields.get("inputs") is not None:
            fields["inputs"] = tuple(fields["inputs"])
        table[name] = Spec(name=name, kind=kind, fn=fn, **fields)
        return fn

    return decorator


def register_objective(name: str, *, inputs: tuple[str, ...] | None = None,
                       any_of: tuple[tuple[str, ...], ...] = (), when: tuple[tuple[str, tuple[str, ...]], ...] = (),
                       hparams: Mapping[str, Any] | None = None, supplied: tuple[str, ...] = (),
                       choices: tuple[tuple[str, tuple[Any, ...]], ...] = (), trainer: str = "rl",
                       overwrite: bool = False):
    """Decorator: `@register_objective("my_loss", inputs=("logp", "old_logp", "advantages", "mask"))`
    on `fn(batch, **hparams) -> LossOutput`. Hyperparameters default to `fn`'s keyword-only ones.

    Example:
        @register_objective("pg_plain", inputs=("logp", "advantages", "mask"))
        def pg_plain(batch, *, scale: float = 1.0):
            return vanilla_pg_loss(batch["logp"], batch["advantages"] * scale, batch["mask"])
    """
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}; got {trainer!r}")
    return _register(_OBJECTIVES, "objective", name, overwrite, inputs=inputs, any_of=any_of, when=when,
                     hparams=hparams, supplied=supplied, choices=choices, trainer=trainer)


def register_advantage(name: str, *, inputs: tuple[str, ...] | None = None, rewards: str = "any",
                       hparams: Mapping[str, Any] | None = None, supplied: tuple[str, ...] = ("num_groups",),
                       overwrite: bool = False):
    """Decorator: `@register_advantage("my_adv", inputs=("rewards", "group_ids"), rewards="scalar")`
    on `fn(batch, *, num_groups, **hparams) -> AdvantageOutput`."""
    if rewards not in REWARD_SHAPES:
        raise ValueError(f"rewards must be one of {REWARD_SHAPES}; got {rewards!r}")
    return _register(_ADVANTAGES, "advantage estimator", name, overwrite, inputs=inputs, rewards=rewards,
                     hparams=hparams, supplied=supplied)


def objective_spec(name: str) -> Spec:
    """The `Spec` of a registered objective."""
    if name not in _OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; registered: {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name]


def advantage_spec(name: str) -> Spec:
    """The `Spec` of a registered advantage estimator."""
    if name not in _ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {sorted(_ADVANTAGES)}")
    return _ADVANTAGES[name]


def get_objective(name: str) -> Objective:
    """Look up a registered objective by name."""
    return objective_spec(name).fn


def get_advantage(name: str) -> Callable[..., AdvantageOutput]:
    """Look up a registered advantage estimator by name."""
    return advantage_spec(name).fn


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def list_advantages() -> list[str]:
    return sorted(_ADVANTAGES)


def _need(batch: Mapping[str, Any], method: str, *keys: str) -> list[Any]:
    missing = [k for k in keys if batch.get(k) is None]
    if missing:
        raise KeyError(f"objective {method!r} needs batch keys {missing}; got {sorted(batch)}")
    return [batch[k] for k in keys]


# Standard metric names: the same quantity has the same key whichever objective reports it.
_PG_METRICS = {"pg_clipfrac": "clipfrac", "pg_clipfrac_lower": "clipfrac_lower", "ppo_kl": "kl",
               "seq_kl": "kl", "frac_clipped_pos": "clipfrac"}


def _standard(out: LossOutput) -> LossOutput:
    renamed = {}
    for key, value in out.metrics.items():
        term, _, metric = key.partition("/")
        if term == "pg" and metric in _PG_METRICS:
            key = f"pg/{_PG_METRICS[metric]}"
        renamed[key] = value
    return LossOutput(out.loss, renamed)


def _with_extras(method: str, main: LossOutput, batch, *, kl_coef: float, kl_kind: str,
                 entropy_coef: float, **terms: LossOutput) -> LossOutput:
    """Add the optional KL-to-reference (`ref/`) and entropy (`entropy/`) terms to a policy loss."""
    terms = {"pg": main, **terms}
    if kl_coef:
        logp, ref, mask = _need(batch, method, "logp", "ref_logp", "mask")
        terms["ref"] = kl_penalty(logp, ref, mask, coef=kl_coef, kind=kl_kind)
    if entropy_coef:
        ent, mask = _need(batch, method, "entropy", "mask")
        terms["entropy"] = entropy_bonus(ent, mask, coef=entropy_coef)
    return _standard(compose(**terms))


_POLICY_INPUTS = ("logp", "old_logp", "advantages", "mask")
_EXTRAS_WHEN = (("kl_coef", ("ref_logp",)), ("entropy_coef", ("entropy",)))
_EXTRAS_HPARAMS = {"kl_coef": 0.0, "kl_kind": "k3", "entropy_coef": 0.0}


def _policy_objective(name: str, fn: Callable[..., LossOutput], **defaults):
    hparams = {**signature_hparams(fn), **defaults, **_EXTRAS_HPARAMS}

    @register_objective(name, inputs=_POLICY_INPUTS, when=_EXTRAS_WHEN, hparams=hparams)
    def objective(batch, *, kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0, **hparams):
        logp, old, adv, mask = _need(batch, name, *_POLICY_INPUTS)
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


@register_objective("tbpo", inputs=("logp", "old_logp", "rollout_logp", "advantages", "mask"), when=_EXTRAS_WHEN,
                    hparams={**signature_hparams(tbpo.tbpo_loss), **_EXTRAS_HPARAMS})
def _tbpo(batch, *, kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0, **hparams):
    logp, old, roll, adv, mask = _need(batch, "tbpo", "logp", "old_logp", "rollout_logp", "advantages", "mask")
    main = tbpo.tbpo_loss(logp, old, roll, adv, mask, **hparams)
    return _with_extras("tbpo", main, batch, kl_coef=kl_coef, kl_kind=kl_kind, entropy_coef=entropy_coef)


@register_objective("ppo_value", inputs=("values", "old_values", "returns", "mask"),
                    hparams=signature_hparams(policy_losses.value_loss))
def _ppo_value(batch, **hparams):
    out = policy_losses.value_loss(*_need(batch, "ppo_value", "values", "old_values", "returns", "mask"), **hparams)
    return compose(value=LossOutput(out.loss, {"clipfrac": out.metrics["vf_clipfrac"]}))


@register_objective("sdar", inputs=_POLICY_INPUTS + ("teacher_logp",),
                    when=_EXTRAS_WHEN + (("warmdown_steps", ("aux_scale",)),),
                    choices=(("gate", distillation.SDAR_GATES),))
def _sdar(batch, *, clip_low: float = 0.2, clip_ratio_c: float = 3.0, kl_coef: float = 0.01,
          kl_kind: str = "k3", sdar_coef: float = 0.01, gate_beta: float = 5.0, entropy_coef: float = 0.0,
          gate: str = "sigmoid", warmdown_steps: int = 0):
    """GRPO (dual-clip, token-mean) + kl_coef KL_k3 + sdar_coef * SDAR auxiliary (released-script defaults).

    gate="none": the auxiliary without SDAR's sigmoid gate (naive GRPO + OPSD; `sdar_aux_loss`).
    warmdown_steps > 0: the auxiliary's weight decays linearly to 0 over that many RL steps
    (`sdar_warmdown`); the trainer supplies it per row as `aux_scale [B]`."""
    logp, old, adv, mask, teacher = _need(batch, "sdar", *_POLICY_INPUTS, "teacher_logp")
    pg = policy_losses.dual_clip_loss(logp, old, adv, mask, clip_low=clip_low, clip_ratio_c=clip_ratio_c)
    scale = _need(batch, "sdar", "aux_scale")[0] if warmdown_steps > 0 else None
    aux = distillation.sdar_aux_loss(logp, teacher, mask, gate_beta=gate_beta, coef=sdar_coef, gate=gate,
                                     row_scale=scale)
    return _with_extras("sdar", pg, batch, kl_coef=kl_coef, kl_kind=kl_kind, entropy_coef=entropy_coef, sdar=aux)


def _distill(out: LossOutput) -> LossOutput:
    return compose(distill=out)


@register_objective("opd", inputs=("logp", "old_logp", "teacher_logp", "mask"),
                    hparams=signature_hparams(distillation.opd_loss))
def _opd(batch, **hparams):
    return _distill(distillation.opd_loss(*_need(batch, "opd", "logp", "old_logp", "teacher_logp", "mask"),
                                          **hparams))


_TEACHER_DISTRIBUTION = (("teacher_topk_idx", "teacher_topk_logp"), ("teacher_logits",))
_DISTRIBUTION_ARGS = ("teacher_logits", "teacher_topk_idx", "teacher_topk_logp")


@register_objective("opd_full", inputs=("student_logits", "mask"), any_of=_TEACHER_DISTRIBUTION,
                    hparams=signature_hparams(distillation.opd_full_loss, exclude=_DISTRIBUTION_ARGS))
def _opd_full(batch, **hparams):
    student, mask = _need(batch, "opd_full", "student_logits", "mask")
    return _distill(distillation.opd_full_loss(student, mask, teacher_logits=batch.get("teacher_logits"),
                                               teacher_topk_idx=batch.get("teacher_topk_idx"),
                                               teacher_topk_logp=batch.get("teacher_topk_logp"), **hparams))


@register_objective("aopd", inputs=("logp", "old_logp", "teacher_logp", "mask", "student_logits"),
                    any_of=_TEACHER_DISTRIBUTION,
                    hparams=signature_hparams(distillation.aopd_loss, exclude=_DISTRIBUTION_ARGS))
def _aopd(batch, **hparams):
    arrays = _need(batch, "aopd", "logp", "old_logp", "teacher_logp", "mask", "student_logits")
    return _distill(distillation.aopd_loss(*arrays, teacher_logits=batch.get("teacher_logits"),
                                           teacher_topk_idx=batch.get("teacher_topk_idx"),
                                           teacher_topk_logp=batch.get("teacher_topk_logp"), **hparams))


_DPO_INPUTS = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")


@register_objective("dpo", inputs=_DPO_INPUTS, hparams=signature_hparams(preference.dpo_loss), trainer="dpo")
def _dpo(batch, **hparams):
    return compose(dpo=preference.dpo_loss(*_need(batch, "dpo", *_DPO_INPUTS), **hparams))


_BCPG_INPUTS = ("logp", "old_logp", "mask", "rewards", "group_ids", "step_id", "step_ok")


@register_objective("bcpg_nsa", inputs=_BCPG_INPUTS, supplied=("num_groups",),
                    hparams=signature_hparams(preference.bcpg_nsa_loss, exclude=("num_groups",)))
def _bcpg_nsa(batch, **hparams):
    return _standard(compose(pg=preference.bcpg_nsa_loss(*_need(batch, "bcpg_nsa", *_BCPG_INPUTS), **hparams)))


def _outcome(name: str, fn):
    @register_advantage(name, inputs=("rewards", "group_ids"), rewards="scalar",
                        hparams=signature_hparams(fn, exclude=("num_groups",)))
    def estimator(batch, **hparams):
        rewards, groups = _need(batch, name, "rewards", "group_ids")
        return AdvantageOutput(fn(rewards, groups, **hparams), None, {})

    return estimator


_outcome("grpo", adv_lib.grpo_advantages)
_outcome("drgrpo", adv_lib.drgrpo_advantages)
_outcome("rloo", adv_lib.rloo_advantages)


@register_advantage("gae", inputs=("token_rewards", "values", "mask"), rewards="scalar",
                    hparams=signature_hparams(adv_lib.gae_advantages), supplied=())
def _gae(batch, **hparams):
    adv, returns = adv_lib.gae_advantages(*_need(batch, "gae", "token_rewards", "values", "mask"), **hparams)
    return AdvantageOutput(adv, returns, {})


@register_advantage("rdpo", inputs=("rewards", "group_ids"), rewards="vector",
                    hparams=signature_hparams(rdpo.rdpo_advantages, exclude=("num_groups",)))
def _rdpo(batch, **hparams):
    adv, metrics = rdpo.rdpo_advantages(*_need(batch, "rdpo", "rewards", "group_ids"), **hparams)
    return AdvantageOutput(adv, None, metrics)


@register_advantage("skillc", inputs=("rewards", "group_ids", "cond"), rewards="scalar",
                    hparams=signature_hparams(skillc.skillc_advantages, exclude=("num_groups",)))
def _skillc(batch, **hparams):
    adv, metrics = skillc.skillc_advantages(*_need(batch, "skillc", "rewards", "group_ids", "cond"), **hparams)
    return AdvantageOutput(adv, None, metrics)
