"""Chunkwise-parallel delta rule in pure JAX (WY representation / UT transform).

The sequence is cut into chunks of `C` tokens. Inside a chunk everything is parallel matmuls and
one unit-lower-triangular inverse; only the `K x V` state is passed from chunk to chunk. With `G` the
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


def _merge_pair(upper, lower, below):
    """Two neighbouring diagonal blocks [..., n, h, h] and their coupling -> [..., n/2, 2h, 2h]."""
    top = jnp.concatenate([upper, jnp.zeros_like(upper)], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([below, lower], axis=-1)], axis=-2)


def decayed_scores(a, e, big_g):
    """M_ij = sum_d a_i[d] e_j[d] exp(G_i[d] - G_j[d]) for i >= j (0 above the diagonal).

    a, e: [..., C, K]; big_g: [..., C, 1] (per head) or [..., C, K] (per channel) cumulative log
    decay; C a power of two. Per-head decay is a plain masked matmul. Per-channel decay cannot be a
    mask, so blocks are merged pairwise (sizes 1, 2, 4, ...): the coupling block between rows
    [m + 1, m + h] and columns [m - h + 1, m] is factored through the reference row m,
    (a_i exp(G_i - G_m)) . (e_j exp(G_m - G_j)), where both exponents are <= 0 for a decay g <= 0,
    so nothing overflows and only 2 K log2(C) exponentials per row are needed.
    """
    c = a.shape[-2]
    if big_g.shape[-1] == 1:
        idx = jnp.arange(c)
        causal = idx[:, None] >= idx[None, :]
        diff = big_g[..., :, None, 0] - big_g[..., None, :, 0]
        # Mask before exp: the upper triangle's exponent is positive and may overflow.
        gamma = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)
        return jnp.einsum("...ik,...jk->...ij", a, e, precision=_HIGHEST) * gamma
    blocks = jnp.sum(a * e, axis=-1)[..., None, None]  # [..., C, 1, 1]: the diagonal
    h = 1
    while h < c:
        shape = a.shape[:-2] + (c // (2 * h), 2, h, a.shape[-1])
        a2, e2, g2 = a.reshape(shape), e.reshape(shape), big_g.reshape(shape)
        g_ref = g2[..., 0, -1:, :]  # last row of the upper half
        rows = a2[..., 1, :, :] * jnp.exp(g2[..., 1, :, :] - g_ref)
        cols = e2[..., 0, :, :] * jnp.exp(g_ref - g2[..., 0, :, :])
        below = jnp.einsum("...ik,...jk->...ij", rows, cols, precision=_HIGHEST)
        blocks = _merge_pair(blocks[..., 0::2, :, :], blocks[..., 1::2, :, :], below)
        h *= 2
    return blocks[..., 0, :, :]


def prepare_chunks(q, r, e, u, g, reset, chunk_size) -> ChunkTensors:
    """Builds the chunk-parallel tensors of the WY/UT algorithm.

    Args:
      q, r, e: [B, T, H, K] scaled query, read/erase key, write key.
      u: [B, T, H, V] write value.
      g: [B, T, H, 1] (per head) or [B, T, H, K] (per channel) log decay.
      reset: optional [B, T] bool, True at the first token of every sequence after the first.
      chunk_size: C, a power of two.
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two; got {chunk_size}")
    b, t, _, k = q.shape
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    q, r, e, u, g = (_to_chunks(x.astype(f32), chunk_size) for x in (q, r, e, u, g))
    seg = _segment_index(reset, b, t, chunk_size)[:, None]  # [B, 1, NT, C]

    big_g = jnp.cumsum(g, axis=-2)  # [B, H, NT, C, Kg]
    idx = jnp.arange(chunk_size)
    same_seq = seg[..., :, None] == seg[..., None, :]
    strict = jnp.logical_and(same_seq, idx[:, None] > idx[None, :])
    lower = jnp.where(strict, decayed_scores(r, e, big_g), 0.0)
    p = jnp.where(same_seq, decayed_scores(q, e, big_g), 0.0)

    carries_state = (seg == 0)[..., None]  # token still in the sequence that entered the chunk
    decay_in = jnp.exp(big_g)
    qd = q * decay_in * carries_state
    rd = r * decay_in * carries_state
    g_last = big_g[..., -1:, :]
    in_last_seq = (seg == seg[..., -1:])[..., None]
    ed = e * jnp.exp(g_last - big_g) * in_last_seq
    dlast = jnp.exp(g_last[..., 0, :]) * (seg[..., -1] == 0)[..., None]
    dlast = jnp.broadcast_to(dlast, dlast.shape[:-1] + (k,))

    inverse = unit_lower_inverse(lower)
    apply = lambda rhs: jnp.einsum("...ij,...jd->...id", inverse, rhs, precision=_HIGHEST)  # noqa: E731
    return ChunkTensors(qd=qd, w=apply(rd), ed=ed, ut=apply(u), p=p, dlast=dlast)


def unit_lower_inverse(lower):
    """(I + lower)^-1 for strictly lower-triangular `lower` [..., n, n], by block doubling.

    Starting from 1 x 1 diagonal blocks (inverse 1), two neighbouring inverted blocks A^-1, D^-1
    with the coupling block B below the diagonal merge into [[A^-1, 0], [-D^-1 B A^-1, D^-1]].
    Only batched matmuls (no triangular solve: XLA's CPU solve is slow on many small systems),
    ~2/3 n^3 flops, and intermediates stay at the scale of the true inverse (no powers of L).
    """
    n = lower.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    batch = lower.shape[:-2]
    lower = jnp.pad(lower, [(0, 0)] * len(batch) + [(0, size - n), (0, size - n)])
    blocks = jnp.ones(batch + (size, 1, 1), lower.dtype)  # inverses of the b x b diagonal blocks
    b = 1
    while b < size:
        nb = size // b
        grid = lower.reshape(batch + (nb, b, nb, b))
        # Coupling block of pair p: rows of block 2p + 1, columns of block 2p.
        below = jnp.diagonal(grid[..., 1::2, :, 0::2, :], axis1=-4, axis2=-2)  # [..., b, b, nb/2]
        below = jnp.moveaxis(below, -1, -3)
        a_inv, d_inv = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        mixed = -jnp.einsum("...ij,...jk,...kl->...il", d_inv, below, a_inv, precision=_HIGHEST)
        top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
        bottom = jnp.concatenate([mixed, d_inv], axis=-1)
        blocks = jnp.concatenate([top, bottom], axis=-2)
        b *= 2
    return blocks[..., 0, :n, :n]


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
