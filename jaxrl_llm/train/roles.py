"""The roles of one RL step and the batch fields each produces, checked against what the objective reads.

prompts -> rollout -> scorers -> extra forward passes (reference, teacher, critic) -> advantages ->
objective. Every role but the rollout is optional and configured under `rl`:

| role            | config                                  | produces                                   |
|-----------------|-----------------------------------------|--------------------------------------------|
| rollout         | always                                  | mask, rollout_logp, group_ids              |
| learner         | always (inside the update)              | logp, entropy, student_logits              |
| proximal pass   | always                                  | old_logp                                   |
| scorers         | `rl.scorers` (1 name: `[B]`, more: `[B, R]`) | rewards, token_rewards                |
| reference pass  | runs when the objective reads ref_logp  | ref_logp                                   |
| teacher pass    | `rl.teacher.source` ("privileged", "hf:PATH", "orbax:RUN") | teacher_logp                         |
| teacher top-k   | `rl.teacher.topk > 0`                   | teacher_topk_idx, teacher_topk_logp        |
| critic          | `rl.critic.enabled`                     | values (learner), old_values, returns (GAE's, or the outcome reward per token) |
| condition flags | `rl.condition.source = "privileged"`    | cond                                       |
| step labels     | `rl.step_labels.enabled`                | step_id, step_ok                           |
| estimator       | `rl.advantage`                          | advantages (and returns for GAE)           |

`check_roles(cfg)` proves, before anything is built or compiled, that the configured roles
produce every field the objective and the estimator read (with their configured hyperparameters),
that every `objective_kwargs` / `advantage_kwargs` key is a real hyperparameter, and that the
reward shape fits the estimator. Errors name the field and say which role would produce it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxrl_llm.envs.rewards import SCORER_CHECKS, get_scorer
from jaxrl_llm.envs.step_labels import get_step_scorer
from jaxrl_llm.objectives.registry import Spec, advantage_spec, objective_spec

TEACHER_SOURCES = ("", "privileged")  # or "hf:PATH"
CONDITION_SOURCES = ("", "privileged")

# Field -> how to get it, for error messages.
_HOW = {
    "ref_logp": "the reference pass (runs by itself when the objective reads ref_logp)",
    "teacher_logp": "the teacher pass: set rl.teacher.source='privileged' (the actor on the task's privileged "
                    "prompt), 'hf:PATH' or 'orbax:RUN_DIR' (a separate teacher checkpoint)",
    "teacher_topk_idx": "the teacher's top-k pass: set rl.teacher.source and rl.teacher.topk > 0",
    "teacher_topk_logp": "the teacher's top-k pass: set rl.teacher.source and rl.teacher.topk > 0",
    "teacher_logits": "nothing: the trainer never materialises teacher [B, T, V] logits; use rl.teacher.topk > 0",
    "values": "the critic: set rl.critic.enabled=true",
    "old_values": "the critic: set rl.critic.enabled=true",
    "returns": "the critic: set rl.critic.enabled=true (with rl.advantage='gae')",
    "cond": "condition flags: set rl.condition.source='privileged'",
    "step_id": "step labels: set rl.step_labels.enabled=true",
    "step_ok": "step labels: set rl.step_labels.enabled=true",
}


# Field -> config overrides of a role that produces it (for `overrides_for`).
_ROLE_OVERRIDES = {
    "teacher_logp": {"rl.teacher.source": "privileged"},
    "teacher_topk_idx": {"rl.teacher.source": "privileged", "rl.teacher.topk": 4},
    "teacher_topk_logp": {"rl.teacher.source": "privileged", "rl.teacher.topk": 4},
    "values": {"rl.critic.enabled": True},
    "old_values": {"rl.critic.enabled": True},
    "returns": {"rl.critic.enabled": True, "rl.advantage": "gae"},
    "cond": {"rl.condition.source": "privileged"},
    "step_id": {"rl.step_labels.enabled": True},
    "step_ok": {"rl.step_labels.enabled": True},
}


def overrides_for(spec: Spec, hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config overrides (`{"rl.teacher.source": "privileged", ...}`) that switch on the roles producing
    every field `spec` reads; for an estimator of reward vectors, two scorers."""
    out: dict[str, Any] = {}
    fields = list(spec.required_inputs(hparams)) + list(spec.any_of[0] if spec.any_of else ())
    for field in fields:
        out.update(_ROLE_OVERRIDES.get(field, {}))
    if spec.rewards == "vector":
        out["rl.scorers"] = ("task", "eos")
    return out


def num_rewards(rl: Mapping[str, Any]) -> int:
    return len(tuple(rl["scorers"]))


def teacher_enabled(rl: Mapping[str, Any]) -> bool:
    return bool(rl["teacher"]["source"])


def objective_fields(rl: Mapping[str, Any], *, skill_flags: bool = False) -> set[str]:
    """Fields the configured trainer can hand to the objective (inside the update). `skill_flags`: an agent
    run whose SkillC curriculum sets `cond` (`agent.skillc.enabled`)."""
    fields = {"logp", "entropy", "student_logits", "old_logp", "rollout_logp", "mask", "advantages",
              "rewards", "group_ids", "ref_logp"}
    if teacher_enabled(rl):
        fields.add("teacher_logp")
        if int(rl["teacher"]["topk"]) > 0:
            fields |= {"teacher_topk_idx", "teacher_topk_logp"}
    if rl["critic"]["enabled"]:
        # returns: GAE's with rl.advantage = "gae", else the outcome reward at every response token.
        fields |= {"values", "old_values", "returns"}
    if rl["condition"]["source"] or skill_flags:
        fields.add("cond")
    if rl["step_labels"]["enabled"]:
        fields |= {"step_id", "step_ok"}
    if int(dict(rl["objective_kwargs"]).get("warmdown_steps", 0) or 0) > 0:
        fields.add("aux_scale")  # the warm-down's per-row weight (train/rl_step.py: warmdown_scale)
    return fields


def estimator_fields(rl: Mapping[str, Any], *, skill_flags: bool = False) -> set[str]:
    """Fields the configured trainer can hand to the advantage estimator (on the host)."""
    fields = {"rewards", "group_ids", "token_rewards", "mask"}
    if rl["critic"]["enabled"]:
        fields.add("values")
    if rl["condition"]["source"] or skill_flags:
        fields.add("cond")
    return fields


def _missing_error(spec: Spec, where: str, missing: list[str], available: set[str]) -> ValueError:
    field = missing[0]
    how = _HOW.get(field, "no role of this trainer")
    fix = overrides_for(spec)
    hint = f" Suggested: {' '.join(f'--config.{k}={v}' for k, v in fix.items())}." if fix else ""
    return ValueError(f"{where}={spec.name!r} needs batch field {field!r}, which the configured trainer does not "
                      f"produce; it comes from {how}. Missing: {missing}; available: {sorted(available)}.{hint}")


def configured_objective_kwargs(rl: Mapping[str, Any]) -> dict[str, Any]:
    """`rl.objective_kwargs`, with `rl.kl_coef` joining them when non-zero."""
    kwargs = dict(rl["objective_kwargs"])
    if float(rl["kl_coef"]):
        kwargs["kl_coef"] = float(rl["kl_coef"])
    return kwargs


def required_objective_fields(rl: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields the configured objective reads with its configured hyperparameters."""
    spec = objective_spec(rl["objective"])
    fields = list(spec.required_inputs(configured_objective_kwargs(rl)))
    for group in spec.any_of:
        if group[0] in objective_fields(rl):
            fields.extend(group)
            break
    return tuple(fields)


def needs_reference(rl: Mapping[str, Any]) -> bool:
    return "ref_logp" in required_objective_fields(rl)


def needs_student_logits(rl: Mapping[str, Any]) -> bool:
    return "student_logits" in required_objective_fields(rl)


def check_roles(cfg: Any) -> None:
    """Raise `ValueError` naming the field when the configured roles cannot feed the objective/estimator."""
    rl = cfg.rl
    try:
        spec = objective_spec(rl.objective)
        est = advantage_spec(rl.advantage)
    except KeyError as e:
        raise ValueError(f"rl.objective / rl.advantage: {e.args[0]}") from None
    if spec.trainer != "rl":
        raise ValueError(f"rl.objective={spec.name!r} is a {spec.trainer!r} objective: train it with the "
                         f"`{spec.trainer}` command, not `rl`")
    spec.check_hparams(dict(rl.objective_kwargs), "rl.objective_kwargs")
    est.check_hparams(dict(rl.advantage_kwargs), "rl.advantage_kwargs")
    for name in rl.scorers:
        try:
            get_scorer(name)
        except KeyError as e:
            raise ValueError(f"rl.scorers: {e.args[0]}") from None
        if name in SCORER_CHECKS:
            SCORER_CHECKS[name](rl.get(name, None))  # the scorer's own `rl.<name>` settings
    if not tuple(rl.scorers):
        raise ValueError("rl.scorers must name at least one scorer (e.g. ('task',))")
    source = str(rl.teacher.source)
    if source not in TEACHER_SOURCES and not source.startswith(("hf:", "orbax:")):
        raise ValueError(f"rl.teacher.source must be '', 'privileged', 'hf:PATH' or 'orbax:RUN_DIR'; got {source!r}")
    if int(rl.teacher.topk) < 0:
        raise ValueError(f"rl.teacher.topk must be >= 0; got {rl.teacher.topk}")
    if int(rl.teacher.topk) and not source:
        raise ValueError("rl.teacher.topk > 0 needs a teacher: set rl.teacher.source")
    if rl.condition.source not in CONDITION_SOURCES:
        raise ValueError(f"rl.condition.source must be one of {CONDITION_SOURCES}; got {rl.condition.source!r}")
    if not 0.0 < float(rl.condition.fraction) < 1.0:
        raise ValueError(f"rl.condition.fraction must be in (0, 1); got {rl.condition.fraction}")
    if not 0.0 <= float(rl.step_labels.get("judge_false_positive", 0.0)) <= 1.0:
        raise ValueError("rl.step_labels.judge_false_positive must be a probability in [0, 1]; "
                         f"got {rl.step_labels.judge_false_positive}")
    prm = str(rl.step_labels.get("prm", ""))
    if prm:
        try:
            get_step_scorer(prm)
        except KeyError as e:
            raise ValueError(f"rl.step_labels.prm: {e.args[0]}") from None
        if not 0.0 <= float(rl.step_labels.get("prm_threshold", 0.5)) <= 1.0:
            raise ValueError(f"rl.step_labels.prm_threshold must be in [0, 1]; got {rl.step_labels.prm_threshold}")

    skill_flags = bool(cfg.get("agent", {}).get("skillc", {}).get("enabled", False))
    available = objective_fields(rl, skill_flags=skill_flags)
    kwargs = configured_objective_kwargs(rl)
    missing = spec.missing_inputs(available, kwargs)
    if missing:
        raise _missing_error(spec, "rl.objective", missing, available)
    est_available = estimator_fields(rl, skill_flags=skill_flags)
    missing = est.missing_inputs(est_available, dict(rl.advantage_kwargs))
    if missing:
        raise _missing_error(est, "rl.advantage", missing, est_available)
    r = num_rewards(rl)
    if "num_groups" in est.supplied and int(rl.samples_per_prompt) < 2:
        raise ValueError(f"rl.samples_per_prompt must be >= 2 for the group estimator {est.name!r}")
    if est.rewards == "scalar" and r != 1:
        raise ValueError(f"rl.advantage={est.name!r} reads rewards [B], but rl.scorers={tuple(rl.scorers)} "
                         f"give rewards [B, {r}]: use one scorer or an estimator of reward vectors (rdpo)")
    if est.rewards == "vector" and r < 2:
        raise ValueError(f"rl.advantage={est.name!r} reads reward vectors [B, R] with R >= 2, but rl.scorers="
                         f"{tuple(rl.scorers)} give rewards [B]: list two or more scorers, e.g. ('task', 'eos')")
    if "rewards" in spec.required_inputs(kwargs) and r != 1:
        raise ValueError(f"rl.objective={spec.name!r} reads rewards [B], but rl.scorers give [B, {r}]")
