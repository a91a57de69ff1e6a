"""Decaying prompt hints with a per-resource-group switch (LANG, `objectives/lang.py`), for the RL loop.

With `rl.hints.enabled`, each prompt of step t is the task's `hinted_prompt(problem, f)`: the
question followed by the first `floor(f L)` words of its teacher trace, where `f = p_t` (cosine
decay over `rl.hints.decay_steps`, default `rl.steps`) unless the problem's resource group
(`problem.metadata["group"]`, one of `objectives/lang.py: RESOURCE_GROUPS`) has been switched off.
After the step's advantages, `u_R` (share of the group's prompts with a positive-advantage
rollout) updates the EMA `u_bar_R`; once `u_bar_R >= rl.hints.tau` the group's hints stay off.

The switch state lives in `TrainState.extras` (`hint_ema [R]` float32, `hint_off [R]` bool), so it
is checkpointed with the run and a resumed run continues it exactly. Held-out evaluation never
sees hints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.envs.task import Problem
from jaxrl_llm.objectives.lang import (
    RESOURCE_GROUPS,
    LangSwitchState,
    lang_group_usefulness,
    lang_hint_fraction,
    lang_switch_update,
)

GROUPS: tuple[str, ...] = tuple(RESOURCE_GROUPS)
SCHEDULES = ("cosine", "linear")
EMA_KEY, OFF_KEY = "hint_ema", "hint_off"


def hints_config(rl: Any) -> Any | None:
    """The `rl.hints` section when hints are on, else None (configs without the section have them off)."""
    hints = rl.get("hints", None)
    return hints if hints is not None and bool(hints.get("enabled", False)) else None


def check_hints_config(rl: Any, task: Any) -> None:
    """Fail before anything compiles on a bad `rl.hints` field or a task without hinted prompts."""
    hints = hints_config(rl)
    if hints is None:
        return
    if hints.schedule not in SCHEDULES:
        raise ValueError(f"rl.hints.schedule must be one of {SCHEDULES}; got {hints.schedule!r}")
    if int(hints.decay_steps) < 0:
        raise ValueError(f"rl.hints.decay_steps must be >= 0 (0: rl.steps); got {hints.decay_steps}")
    if not 0.0 <= float(hints.alpha) < 1.0:
        raise ValueError(f"rl.hints.alpha must be in [0, 1); got {hints.alpha}")
    if not 0.0 < float(hints.tau) <= 1.0:
        raise ValueError(f"rl.hints.tau must be in (0, 1]; got {hints.tau}")
    if not hasattr(task, "hinted_prompt"):
        raise ValueError(f"rl.hints.enabled needs a task with hinted_prompt(problem, fraction); task "
                         f"{getattr(task, 'name', type(task).__name__)!r} has none")


def initial_extras(rl: Any) -> dict[str, np.ndarray]:
    """`TrainState.extras` entries of the switch: all groups on, zero usefulness (empty when hints are off)."""
    if hints_config(rl) is None:
        return {}
    return {EMA_KEY: np.zeros(len(GROUPS), np.float32), OFF_KEY: np.zeros(len(GROUPS), bool)}


def problem_groups(problems: Sequence[Problem]) -> np.ndarray:
    """`[P]` int32 index into `GROUPS` of each problem's `metadata["group"]`."""
    out = []
    for i, p in enumerate(problems):
        group = p.metadata.get("group")
        if group not in GROUPS:
            raise ValueError(f"problem {i} has metadata group {group!r}; rl.hints needs one of {GROUPS}")
        out.append(GROUPS.index(group))
    return np.asarray(out, np.int32)


def decay_steps(rl: Any) -> int:
    hints = hints_config(rl)
    return int(hints.decay_steps) or int(rl.steps)


def hint_fractions(step: int, total_steps: int, groups: np.ndarray, hint_off: np.ndarray, *,
                   schedule: str = "cosine") -> np.ndarray:
    """`[P]` float64 hint fraction per prompt: `p_t` (host float64), 0 where its group is switched off.

    groups: `[P]` int group index; hint_off: `[R]` bool.
    """
    p = float(lang_hint_fraction(step, total_steps, schedule=schedule))
    return np.where(np.asarray(hint_off, bool)[groups], 0.0, p).astype(np.float64)


def hinted_problems(task: Any, problems: Sequence[Problem], fractions: np.ndarray) -> list[Problem]:
    """Copies of `problems` whose prompt carries the hint (`task.hinted_prompt`); `metadata["hint_fraction"]`
    records the fraction. Rewards still come from the unchanged reference and metadata."""
    return [dataclasses.replace(p, prompt=task.hinted_prompt(p, float(f)),
                                metadata={**p.metadata, "hint_fraction": float(f)})
            for p, f in zip(problems, fractions)]


def switch_step(state: LangSwitchState, advantages: np.ndarray, group_ids: np.ndarray, groups: np.ndarray, *,
                alpha: float, tau: float) -> tuple[LangSwitchState, np.ndarray, np.ndarray]:
    """One update of the switch from the step's advantages.

    advantages: `[B]` (or `[B, T]`: a row counts as positive when any token is); group_ids: `[B]`
    prompt index; groups: `[P]` resource group per prompt. Returns `(state, u [R], present [R])`.
    """
    adv = np.asarray(advantages, np.float32)
    if adv.ndim == 2:
        adv = adv.max(axis=1)
    u, present = lang_group_usefulness(jnp.asarray(adv), jnp.asarray(group_ids), jnp.asarray(groups),
                                       num_prompts=len(groups), num_resource_groups=len(GROUPS))
    return lang_switch_update(state, u, present, alpha=alpha, tau=tau), np.asarray(u), np.asarray(present)


def switch_state(state: Any) -> LangSwitchState:
    """The switch carried in `TrainState.extras`."""
    return LangSwitchState(jnp.asarray(state.extras[EMA_KEY]), jnp.asarray(state.extras[OFF_KEY]))


def with_switch(state: Any, switch: LangSwitchState) -> Any:
    """`state` with the switch written into its extras (same sharding as the entries it replaces)."""
    extras = dict(state.extras)
    for key, value in ((EMA_KEY, switch.usefulness_ema), (OFF_KEY, switch.hint_off)):
        extras[key] = jax.device_put(jnp.asarray(value, extras[key].dtype), extras[key].sharding)
    return state.replace(extras=extras)


def switch_metrics(fractions: np.ndarray, groups: np.ndarray, switch: LangSwitchState, u: np.ndarray,
                   present: np.ndarray) -> dict[str, float]:
    """`hints/fraction/<g>` (mean over the group's prompts this step), `hints/usefulness/<g>` (u_R, when
    present), `hints/ema/<g>` and `hints/off/<g>` (after this step's update)."""
    ema, off = np.asarray(switch.usefulness_ema), np.asarray(switch.hint_off)
    out: dict[str, float] = {}
    for r, name in enumerate(GROUPS):
        rows = groups == r
        if rows.any():
            out[f"hints/fraction/{name}"] = float(fractions[rows].mean())
        if present[r]:
            out[f"hints/usefulness/{name}"] = float(u[r])
        out[f"hints/ema/{name}"] = float(ema[r])
        out[f"hints/off/{name}"] = float(off[r])
    return out


def switch_from_metrics(metrics: dict[str, float]) -> LangSwitchState:
    """The updated switch from a step's `hints/ema/*` and `hints/off/*` (float32 values round-trip exactly)."""
    return LangSwitchState(jnp.asarray([metrics[f"hints/ema/{g}"] for g in GROUPS], jnp.float32),
                           jnp.asarray([metrics[f"hints/off/{g}"] > 0.5 for g in GROUPS], bool))


def prompts_with_hints(rl: Any, task: Any, state: Any, problems: Sequence[Problem], step: int) -> list[Problem]:
    """The step's problems with their hints (the prompt hook of `rl_step.sample_round`); unchanged when off."""
    hints = hints_config(rl)
    if hints is None:
        return list(problems)
    groups = problem_groups(problems)
    fractions = hint_fractions(step, decay_steps(rl), groups, np.asarray(state.extras[OFF_KEY]),
                               schedule=hints.schedule)
    return hinted_problems(task, problems, fractions)


def switch_record(rl: Any, state: Any, problems: Sequence[Problem], advantages: np.ndarray,
                  group_ids: np.ndarray) -> dict[str, float]:
    """The switch update of one step from its advantages, as `switch_metrics` (`rl_step` writes the new
    state back into `TrainState.extras` from these values)."""
    hints = hints_config(rl)
    groups = problem_groups(problems)
    before = switch_state(state)
    switch, u, present = switch_step(before, advantages, group_ids, groups, alpha=float(hints.alpha),
                                     tau=float(hints.tau))
    if not bool(hints.get("switch", True)):
        switch = switch._replace(hint_off=before.hint_off)  # decay only: the EMA is still reported
    fractions = np.asarray([p.metadata.get("hint_fraction", 0.0) for p in problems], np.float64)
    return switch_metrics(fractions, groups, switch, u, present)
