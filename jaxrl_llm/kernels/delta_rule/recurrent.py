"""Token-by-token delta-rule recurrence (`lax.scan`): the reference implementation.

Works on the unified form (see `docs/delta_rule.md`): per token, with `D = Diag(exp(g))`,

    S <- D S;  S <- S + e (u - r^T S)^T;  o = S^T q

where `q` is already scaled, `r` is the read/erase key, `e` the write key and `u` the write value.
All arithmetic is float32 (or float64 when the inputs are float64 and x64 is enabled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def unified_step(state, q, r, e, u, g):
    """One token of the unified delta rule.

    Args:
      state: [B, H, K, V] recurrent state `S` before the token.
      q, r, e: [B, H, K] scaled query, read/erase key, write key.
      u: [B, H, V] write value.
      g: [B, H, 1] or [B, H, K] log decay (natural log, usually <= 0).

    Returns:
      (new_state [B, H, K, V], o [B, H, V]).
    """
    decayed = state * jnp.exp(g)[..., None]
    read = jnp.einsum("bhk,bhkv->bhv", r, decayed)
    new_state = decayed + e[..., None] * (u - read)[..., None, :]
    o = jnp.einsum("bhk,bhkv->bhv", q, new_state)
    return new_state, o


def recurrent_unified(q, r, e, u, g, initial_state, reset=None):
    """Runs `unified_step` over time.

    Args:
      q, r, e: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H, 1] or [B, T, H, K].
      initial_state: [B, H, K, V].
      reset: optional [B, T] bool, True where a new sequence starts (the state is zeroed first).

    Returns:
      (o [B, T, H, V], final_state [B, H, K, V]).
    """
    if reset is None:
        reset = jnp.zeros(q.shape[:2], dtype=bool)
    time_major = [jnp.moveaxis(x, 1, 0) for x in (q, r, e, u, g, reset)]

    def body(state, xs):
        q_t, r_t, e_t, u_t, g_t, reset_t = xs
        state = jnp.where(reset_t[:, None, None, None], 0.0, state)
        return unified_step(state, q_t, r_t, e_t, u_t, g_t)

    final_state, o = jax.lax.scan(body, initial_state, time_major)
    return jnp.moveaxis(o, 0, 1), final_state
