"""Shared conventions for objectives: the `LossOutput` type, shape checks and safe math helpers.

Every objective returns `LossOutput(loss, metrics)`: `loss` is a scalar and `metrics` a flat dict
of scalars that the trainer logs as is. Shape checks run at trace time (shapes are static), so
they cost nothing inside `jax.jit` and fail before any compile.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: beyond this a ratio is meaningless and overflows in bf16


class LossOutput(NamedTuple):
    """A scalar loss and a flat dict of scalar metrics (a pytree: works through jit/vmap/scan)."""

    loss: Array
    metrics: dict[str, Array]


def check_shape(name: str, x: Any, shape: tuple[int | None, ...], what: str) -> None:
    """Raise `ValueError` naming `name` unless `x.shape` matches `shape` (None = any size)."""
    actual = tuple(jnp.shape(x))
    ok = len(actual) == len(shape) and all(s is None or s == a for s, a in zip(shape, actual))
    if not ok:
        raise ValueError(f"{name} must be {what}; got {actual}")


def check_same_shape(names_and_arrays: dict[str, Any], ref_name: str, what: str) -> tuple[int, ...]:
    """Check that every array has the shape of `names_and_arrays[ref_name]`; return that shape."""
    ref = tuple(jnp.shape(names_and_arrays[ref_name]))
    for name, x in names_and_arrays.items():
        if x is None:
            continue
        if tuple(jnp.shape(x)) != ref:
            raise ValueError(f"{name} must be {what} like {ref_name} {ref}; got {tuple(jnp.shape(x))}")
    return ref


def check_token_inputs(**arrays: Any) -> tuple[int, int]:
    """Check that all given token arrays are `[B, T]` and equal-shaped; return `(B, T)`."""
    first = next(k for k, v in arrays.items() if v is not None)
    check_shape(first, arrays[first], (None, None), "[B, T]")
    b, t = check_same_shape(arrays, first, "[B, T]")
    return b, t


def check_per_sequence(name: str, x: Any, batch: int) -> None:
    """Check that `x` is `[B]` with `B == batch`."""
    check_shape(name, x, (batch,), f"[B] with B={batch}")


def broadcast_advantages(advantages: Array, batch: int, length: int) -> Array:
    """Accept `[B]` (outcome) or `[B, T]` (per-token) advantages; return `[B, T]`."""
    shape = tuple(jnp.shape(advantages))
    if shape == (batch,):
        return jnp.broadcast_to(advantages[:, None], (batch, length))
    if shape == (batch, length):
        return advantages
    raise ValueError(f"advantages must be [B] or [B, T] with B={batch}, T={length}; got {shape}")


def safe_div(num: Array, den: Array) -> Array:
    """num / den with 0 where den == 0 (no NaN in value or gradient)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def clamped_ratio(logp: Array, old_logp: Array) -> tuple[Array, Array]:
    """Importance ratio exp(logp - old_logp), log clamped to +-20 as in common PPO code.

    Returns `(ratio, log_ratio)`, both `[B, T]`.
    """
    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.exp(log_ratio), log_ratio


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of `x` over entries where `mask` is 1 (0 when the mask is empty)."""
    mask = mask.astype(x.dtype)
    return safe_div(jnp.sum(x * mask), jnp.sum(mask))
