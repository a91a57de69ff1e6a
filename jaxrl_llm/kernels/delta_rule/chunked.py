"""Chunkwise-parallel delta rule in pure JAX (WY representation / UT transform).

The sequence is cut into chunks of `C` tokens. Inside a chunk everything is parallel matmuls and
one unit-lower-triangular solve; only the `K x V` state is passed from chunk to chunk. With `G` the
in-chunk cumulative log decay and `S` the state entering the chunk (fp32 throughout):

    L     = strictly_lower(sum_d r_i[d] e_j[d] exp(G_i[d] - G_j[d]))          [C, C]
    W     = (I + L)^-1 (R * exp(G)),   U~ = (I + L)^-1 U                      [C, K], [C, V]
    Vnew  = U~ - W S
    O     = (Q * exp(G)) S + (causal(sum_d q_i[d] e_j[d] exp(G_i[d] - G_j[d]))) Vnew
    S'    = exp(G_last) S + (E * exp(G_last - G))^T Vnew

`prepare_chunks` builds every chunk-parallel tensor (shared with the Pallas kernel), `scan_chunks`
runs the sequential state pass. Sequence starts inside a chunk (packed inputs) are folded into the
chunk tensors as masks, so the state pass never branches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# fp32 matmuls everywhere: the UT solve and long decay products lose too much in bf16/TF32.
_HIGHEST = jax.lax.Precision.HIGHEST


class ChunkTensors(NamedTuple):
    """Per-chunk inputs of the sequential state pass, layout [B, H, NT, C, ...] (fp32).

    qd:    [B, H, NT, C, K]  query times exp(G), zero after an in-chunk sequence start.
    w:     [B, H, NT, C, K]  WY factor (I + L)^-1 (R * exp(G)).
    ed:    [B, H, NT, C, K]  write key times exp(G_last - G), zero before the chunk's last start.
    ut:    [B, H, NT, C, V]  (I + L)^-1 U.
    p:     [B, H, NT, C, C]  causal intra-chunk attention matrix (decay and sequence masks applied).
    dlast: [B, H, NT, K]     state decay over the whole chunk (zero if a sequence starts inside).
    """

    qd: jax.Array
    w: jax.Array
    ed: jax.Array
    ut: jax.Array
    p: jax.Array
    dlast: jax.Array


def num_chunks(t: int, chunk_size: int) -> int:
    return -(-t // chunk_size)


def _to_chunks(x, chunk_size):
    """[B, T, H, D] -> [B, H, NT, C, D], zero-padding T up to NT * C."""
    b, t, h, d = x.shape
    nt = num_chunks(t, chunk_size)
    x = jnp.pad(x, ((0, 0), (0, nt * chunk_size - t), (0, 0), (0, 0)))
    return x.reshape(b, nt, chunk_size, h, d).transpose(0, 3, 1, 2, 4)


def from_chunks(x, t):
    """[B, H, NT, C, D] -> [B, T, H, D] (drops the padding)."""
    b, h, nt, c, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, nt * c, h, d)[:, :t]


def _segment_index(reset, b, t, chunk_size):
    """[B, NT, C] int32: how many sequence starts precede-or-equal each position within its chunk."""
    if reset is None:
        return jnp.zeros((b, num_chunks(t, chunk_size), chunk_size), jnp.int32)
    nt = num_chunks(t, chunk_size)
    reset = jnp.pad(reset.astype(jnp.int32), ((0, 0), (0, nt * chunk_size - t)))
    return jnp.cumsum(reset.reshape(b, nt, chunk_size), axis=-1)


def _pairwise_scores(a, e, gamma):
    """sum_d a_i[d] e_j[d] gamma_ij[d] -> [..., C, C]; gamma is [..., C, C, 1] or [..., C, C, K]."""
    if gamma.shape[-1] == 1:
        return jnp.einsum("...ik,...jk->...ij", a, e, precision=_HIGHEST) * gamma[..., 0]
    return jnp.einsum("...ik,...jk,...ijk->...ij", a, e, gamma, precision=_HIGHEST)


def prepare_chunks(q, r, e, u, g, reset, chunk_size) -> ChunkTensors:
    """Builds the chunk-parallel tensors of the WY/UT algorithm.

    Args:
      q, r, e: [B, T, H, K] scaled query, read/erase key, write key.
      u: [B, T, H, V] write value.
      g: [B, T, H, 1] (per head) or [B, T, H, K] (per channel) log decay.
      reset: optional [B, T] bool, True at the first token of every sequence after the first.
      chunk_size: C.
    """
    b, t, _, k = q.shape
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    q, r, e, u, g = (_to_chunks(x.astype(f32), chunk_size) for x in (q, r, e, u, g))
    seg = _segment_index(reset, b, t, chunk_size)[:, None]  # [B, 1, NT, C]

    big_g = jnp.cumsum(g, axis=-2)  # [B, H, NT, C, Kg]
    idx = jnp.arange(chunk_size)
    causal = idx[:, None] >= idx[None, :]
    same_seq = seg[..., :, None] == seg[..., None, :]
    # Mask before exp: the upper triangle's exponent is positive and may overflow (NaN gradients).
    diff = big_g[..., :, None, :] - big_g[..., None, :, :]
    gamma = jnp.exp(jnp.where(causal[..., None], diff, 0.0))

    strict = jnp.logical_and(same_seq, idx[:, None] > idx[None, :])
    lower = jnp.where(strict, _pairwise_scores(r, e, gamma), 0.0)
    p = jnp.where(jnp.logical_and(same_seq, causal), _pairwise_scores(q, e, gamma), 0.0)

    carries_state = (seg == 0)[..., None]  # token still in the sequence that entered the chunk
    decay_in = jnp.exp(big_g)
    qd = q * decay_in * carries_state
    rd = r * decay_in * carries_state
    g_last = big_g[..., -1:, :]
    in_last_seq = (seg == seg[..., -1:])[..., None]
    ed = e * jnp.exp(g_last - big_g) * in_last_seq
    dlast = jnp.exp(g_last[..., 0, :]) * (seg[..., -1] == 0)[..., None]
    dlast = jnp.broadcast_to(dlast, dlast.shape[:-1] + (k,))

    unit_lower = lower + jnp.eye(chunk_size, dtype=f32)
    solve = lambda rhs: jax.lax.linalg.triangular_solve(  # noqa: E731
        unit_lower, rhs, left_side=True, lower=True, unit_diagonal=True
    )
    return ChunkTensors(qd=qd, w=solve(rd), ed=ed, ut=solve(u), p=p, dlast=dlast)


def scan_chunks(ct: ChunkTensors, initial_state):
    """Sequential state pass over chunks.

    Args:
      ct: `ChunkTensors` with layout [B, H, NT, C, ...].
      initial_state: [B, H, K, V] fp32.

    Returns:
      (o [B, H, NT, C, V], final_state [B, H, K, V]).
    """
    xs = tuple(jnp.moveaxis(x, 2, 0) for x in ct)

    def body(state, x):
        qd, w, ed, ut, p, dlast = x
        v_new = ut - jnp.einsum("bhck,bhkv->bhcv", w, state, precision=_HIGHEST)
        o = jnp.einsum("bhck,bhkv->bhcv", qd, state, precision=_HIGHEST)
        o = o + jnp.einsum("bhij,bhjv->bhiv", p, v_new, precision=_HIGHEST)
        state = dlast[..., None] * state + jnp.einsum(
            "bhck,bhcv->bhkv", ed, v_new, precision=_HIGHEST
        )
        return state, o

    final_state, o = jax.lax.scan(body, initial_state, xs)
    return jnp.moveaxis(o, 0, 2), final_state


def chunked_unified(q, r, e, u, g, initial_state, reset=None, *, chunk_size=64):
    """Chunkwise delta rule on the unified form; same contract as `recurrent_unified`.

    Args:
      q, r, e: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H, 1] or [B, T, H, K].
      initial_state: [B, H, K, V]; reset: optional [B, T] bool.

    Returns:
      (o [B, T, H, V], final_state [B, H, K, V]).
    """
    ct = prepare_chunks(q, r, e, u, g, reset, chunk_size)
    o, final_state = scan_chunks(ct, initial_state.astype(ct.qd.dtype))
    return from_chunks(o, q.shape[1]), final_state
