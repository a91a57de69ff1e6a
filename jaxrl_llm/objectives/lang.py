"""LANG (arXiv 2605.22567): decaying in-language hints, a per-resource-group switch, conjunctive reward.

Hint lengths are data preparation and run on the host in float64 (float32 turns cos(pi/2) into
-4.4e-8 and floors 20 to 19). The switch state and reward are jit-safe JAX.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.objectives.core import check_per_sequence, check_shape
from jaxrl_llm.objectives.groups import check_groups

Array = jax.Array

RESOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "high": ("en", "de", "fr", "es", "pt", "it"),
    "mid": ("ja", "zh", "ru", "ko", "vi"),
    "low": ("ar", "bn", "th", "sw", "te", "id"),
}


def lang_hint_fraction(step, total_steps: int, *, schedule: str = "cosine") -> np.ndarray:
    """Hint fraction p_t: cosine 0.5 (1 + cos(pi t / T)) (default) or linear 1 - t / T; float64, clipped to [0, 1]."""
    t = np.clip(np.asarray(step, np.float64) / float(total_steps), 0.0, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + np.cos(np.pi * t))
    if schedule == "linear":
        return 1.0 - t
    raise ValueError(f"schedule must be 'cosine' or 'linear'; got {schedule!r}")


def lang_hint_length(step, total_steps: int, hint_length, *, schedule: str = "cosine") -> np.ndarray:
    """Hint prefix length k_t = floor(p_t L) (int64) for hint length(s) L."""
    p = lang_hint_fraction(step, total_steps, schedule=schedule)
    return np.floor(p * np.asarray(hint_length, np.float64)).astype(np.int64)


class LangSwitchState(NamedTuple):
    """Per resource group R: smoothed usefulness u_bar [R] and the permanent hint-off flag [R]."""

    usefulness_ema: Array
    hint_off: Array


def lang_switch_init(num_resource_groups: int = 3) -> LangSwitchState:
    """All groups start with hints on and a zero usefulness average."""
    return LangSwitchState(jnp.zeros(num_resource_groups, jnp.float32), jnp.zeros(num_resource_groups, bool))


def lang_group_usefulness(advantages: Array, prompt_ids: Array, prompt_resource_group: Array, *,
                          num_prompts: int, num_resource_groups: int = 3) -> tuple[Array, Array]:
    """u_R = share of group R's prompts in the batch with at least one positive-advantage rollout.

    advantages: [B]; prompt_ids: [B] in [0, num_prompts); prompt_resource_group: [num_prompts] int.
    Returns `(u [R], present [R] bool)`; groups without prompts in the batch are not present.
    """
    b = advantages.shape[0]
    check_per_sequence("advantages", advantages, b)
    check_groups(prompt_ids, b, num_prompts, allow_singleton=True, name="prompt_ids")
    check_shape("prompt_resource_group", prompt_resource_group, (num_prompts,), f"[num_prompts={num_prompts}]")
    in_batch = jax.ops.segment_sum(jnp.ones(b), prompt_ids, num_segments=num_prompts) > 0
    useful = jax.ops.segment_max((advantages > 0).astype(jnp.int32), prompt_ids, num_segments=num_prompts) > 0
    n = jax.ops.segment_sum(in_batch.astype(jnp.float32), prompt_resource_group, num_segments=num_resource_groups)
    k = jax.ops.segment_sum((in_batch & useful).astype(jnp.float32), prompt_resource_group,
                            num_segments=num_resource_groups)
    return k / jnp.maximum(n, 1.0), n > 0


def lang_switch_update(state: LangSwitchState, usefulness: Array, present: Array | None = None, *,
                       alpha: float = 0.9, tau: float = 0.6) -> LangSwitchState:
    """u_bar <- alpha u_bar + (1 - alpha) u for present groups; hint_off latches once u_bar >= tau.

    usefulness, present: [R]. alpha and tau are RECONSTRUCTED defaults (not in the readable text).
    """
    check_per_sequence("usefulness", usefulness, state.usefulness_ema.shape[0])
    present = jnp.ones(usefulness.shape, bool) if present is None else jnp.asarray(present, bool)
    ema = jnp.where(present, alpha * state.usefulness_ema + (1.0 - alpha) * usefulness, state.usefulness_ema)
    return LangSwitchState(ema, state.hint_off | (ema >= tau))


def lang_reward(language_consistent: Array, format_ok: Array, correct: Array) -> Array:
    """Conjunctive reward R = R_lc * R_format * R_acc in {0, 1}. All [B] bool/0-1 -> [B] float."""
    b = language_consistent.shape[0]
    check_per_sequence("format_ok", format_ok, b)
    check_per_sequence("correct", correct, b)
    ok = jnp.asarray(language_consistent, bool) & jnp.asarray(format_ok, bool) & jnp.asarray(correct, bool)
    return ok.astype(jnp.float32)
