"""Chunkwise-parallel delta rule in pure JAX (WY representation / UT transform).

The sequence is cut into chunks of `C` tokens. Inside a chunk everything is parallel matmuls and
one unit-lower-triangular inverse; only the `K x V` state is passed from chunk to chunk. With `G` the
in-chunk cumulative log decay and `S` the state entering the chunk (fp32 throughout):

    L     = strictly_lower(sum_d r_i[d] e_j[d] exp(G_i[d] - G_j[d]))          [C, C]
    W     = (I + L)^-1 (R * exp(G)),   U~ = (I + L)^-1 U                      [C, K], [C, V]
    Vnew  = U~ - W S
    O     = (Q * exp(G)) S + (causal(sum_d q_i[d] e_j[d] exp(G_i[d] - G_j[d]))) Vnew
    S'    = exp(G_last) S + (E * exp(G_last - G))^T Vnew

`prepare_chunks` builds the chunk tensors (for all chunks at once: the Pallas kernel's input),
`chunk_step` advances the state by one chunk. `chunked_unified` runs them streamed: each chunk is
prepared inside the state-pass loop, right before its step, so its tensors never leave the cache.
Sequence starts inside a chunk (packed inputs) are folded into the
chunk tensors as masks, so the state pass never branches.

Per-channel decay (KDA, FG2-GDN) makes the score matrices the costly part. While every chunk's
log-decay span is at most `REFERENCE_SPAN_LIMIT` they are one matmul of (q * e^(G - G_m)) and
(e * e^(G_m - G)) with G_m the chunk's middle row (all factors normal fp32 numbers); beyond it an
exact pairwise block merge takes over (spec 3.6: never exponentiate an unbounded span).
"""

from __future__ import annotations

import functools
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


# Largest in-chunk log-decay span (per channel) for which the single-reference factorisation is
# used: every factor's exponent then stays within +-SPAN (+-SPAN/2 for g <= 0), so each factor is a
# normal fp32 number; for g <= 0 even the discarded upper triangle stays below exp(SPAN) * K.
REFERENCE_SPAN_LIMIT = 60.0


def _causal_mask(c):
    idx = jnp.arange(c)
    return idx[:, None] >= idx[None, :]


def _pairwise_decayed_scores(a, e, big_g):
    """Exact per-channel scores for any decay span, by pairwise block merging (see decayed_scores)."""
    c = a.shape[-2]
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


def _reference_decayed_scores(a, e, big_g):
    """Per-channel scores through one reference row per chunk: (a_i e^(G_i - G_m)) . (e_j e^(G_m - G_j)).

    One [C, K] x [K, C] matmul; exact up to rounding while the chunk's decay span is bounded
    (`REFERENCE_SPAN_LIMIT`), since every factor is then a normal fp32 number.
    """
    c = a.shape[-2]
    g_ref = big_g[..., c // 2 : c // 2 + 1, :]
    rows = a * jnp.exp(big_g - g_ref)
    cols = e * jnp.exp(g_ref - big_g)
    scores = jnp.einsum("...ik,...jk->...ij", rows, cols, precision=_HIGHEST)
    return jnp.where(_causal_mask(c), scores, 0.0)


SCORE_METHODS = ("auto", "reference", "pairwise")


def decay_span(big_g):
    """Largest in-chunk log-decay span max(G) - min(G) over every chunk and channel (scalar).

    big_g: [..., C, Kg]. Max minus min rather than last minus first: a positive g makes G non-monotone.
    """
    return jnp.max(jnp.max(big_g, axis=-2) - jnp.min(big_g, axis=-2))


def chunk_decay_span(g, chunk_size):
    """Upper bound of `decay_span` from the raw log decay g [B, T, H, Kg] (scalar).

    Sums |g| over each chunk (the first token's g is included, so this bounds the span from above).
    """
    b, t, h, kg = g.shape
    nt = num_chunks(t, chunk_size)
    g = jnp.pad(jnp.abs(g), ((0, 0), (0, nt * chunk_size - t), (0, 0), (0, 0)))
    return jnp.max(jnp.sum(g.reshape(b, nt, chunk_size, h, kg), axis=2))


def decayed_scores(a, e, big_g):
    """M_ij = sum_d a_i[d] e_j[d] exp(G_i[d] - G_j[d]) for i >= j (0 above the diagonal).

    a, e: [..., C, K]; big_g: [..., C, 1] (per head) or [..., C, K] (per channel) cumulative log
    decay; C a power of two. Per-head decay is a plain masked matmul. Per-channel decay cannot be a
    mask: while the decay span of every chunk is below `REFERENCE_SPAN_LIMIT` the exponentials are
    split at the chunk's middle row (one matmul); otherwise blocks are merged pairwise (sizes 1, 2,
    4, ...) with the coupling block between rows [m + 1, m + h] and columns [m - h + 1, m] factored
    through the reference row m, where both exponents are <= 0 for a decay g <= 0, so nothing
    overflows for any span.
    """
    c = a.shape[-2]
    if big_g.shape[-1] == 1:
        causal = _causal_mask(c)
        diff = big_g[..., :, None, 0] - big_g[..., None, :, 0]
        # Mask before exp: the upper triangle's exponent is positive and may overflow.
        gamma = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)
        return jnp.einsum("...ik,...jk->...ij", a, e, precision=_HIGHEST) * gamma
    return jax.lax.cond(
        decay_span(big_g) <= REFERENCE_SPAN_LIMIT,
        _reference_decayed_scores,
        _pairwise_decayed_scores,
        a, e, big_g,
    )


def _reference_factors(big_g):
    """(e^(G - G_m), e^(G_m - G)) [..., C, K] with G_m the chunk's middle row; one exp per element.

    The reciprocal is as accurate as a second exp while the span is bounded (both are normal).
    """
    c = big_g.shape[-2]
    rows = jnp.exp(big_g - big_g[..., c // 2 : c // 2 + 1, :])
    return rows, 1.0 / rows


def _query_and_key_scores(q, r, e, big_g, scores, factors=None):
    """(decayed_scores(q, e, G), decayed_scores(r, e, G)), sharing the decay factors.

    `scores` picks the per-channel method: "reference" (needs a bounded span; `factors` from
    `_reference_factors`), "pairwise", or "auto" (decided on device from the span).
    """
    c = q.shape[-2]
    if big_g.shape[-1] == 1:
        return decayed_scores(q, e, big_g), decayed_scores(r, e, big_g)

    def by_reference(q, r, e, big_g, factors=None):
        rows, cols = _reference_factors(big_g) if factors is None else factors
        cols = e * cols
        causal = _causal_mask(c)
        score = lambda a: jnp.where(  # noqa: E731
            causal, jnp.einsum("...ik,...jk->...ij", a * rows, cols, precision=_HIGHEST), 0.0)
        return score(q), score(r)

    def pairwise(q, r, e, big_g):
        return _pairwise_decayed_scores(q, e, big_g), _pairwise_decayed_scores(r, e, big_g)

    if scores == "reference":
        return by_reference(q, r, e, big_g, factors)
    if scores == "pairwise":
        return pairwise(q, r, e, big_g)
    return jax.lax.cond(decay_span(big_g) <= REFERENCE_SPAN_LIMIT, by_reference, pairwise,
                        q, r, e, big_g)


def prepare_chunks(q, r, e, u, g, reset, chunk_size, scores="auto") -> ChunkTensors:
    """Builds the chunk-parallel tensors of the WY/UT algorithm.

    Args:
      q, r, e: [B, T, H, K] scaled query, read/erase key, write key.
      u: [B, T, H, V] write value.
      g: [B, T, H, 1] (per head) or [B, T, H, K] (per channel) log decay.
      reset: optional [B, T] bool, True at the first token of every sequence after the first.
      chunk_size: C, a power of two.
      scores: per-channel decay score method, "auto", "reference" (only valid while
        `chunk_decay_span(g) <= REFERENCE_SPAN_LIMIT`) or "pairwise" (any span).
    """
    if scores not in SCORE_METHODS:
        raise ValueError(f"scores must be one of {SCORE_METHODS}; got {scores!r}")
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two; got {chunk_size}")
    b, t, _, k = q.shape
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    q, r, e, u, g = (_to_chunks(x.astype(f32), chunk_size) for x in (q, r, e, u, g))
    # associative_scan: XLA:CPU lowers cumsum to a reduce_window of O(C^2) adds per channel.
    big_g = jax.lax.associative_scan(jnp.add, g, axis=-2)  # [B, H, NT, C, Kg]
    g_last = big_g[..., -1:, :]
    factors = None
    if scores == "reference" and big_g.shape[-1] > 1:
        # exp is the costly elementwise op here: derive every decay from the one reference exp.
        factors = _reference_factors(big_g)
        g_ref = big_g[..., chunk_size // 2 : chunk_size // 2 + 1, :]
        decay_in, decay_out = factors[0] * jnp.exp(g_ref), factors[1] * jnp.exp(g_last - g_ref)
    else:
        decay_in, decay_out = jnp.exp(big_g), jnp.exp(g_last - big_g)
    p, lower = _query_and_key_scores(q, r, e, big_g, scores, factors)
    idx = jnp.arange(chunk_size)
    lower = jnp.where(idx[:, None] > idx[None, :], lower, 0.0)
    qd, rd = q * decay_in, r * decay_in
    ed = e * decay_out
    dlast = jnp.exp(g_last[..., 0, :])
    if reset is not None:
        # Sequence starts inside a chunk become masks, so the state pass never branches.
        seg = _segment_index(reset, b, t, chunk_size)[:, None]  # [B, 1, NT, C]
        same_seq = seg[..., :, None] == seg[..., None, :]
        p, lower = jnp.where(same_seq, p, 0.0), jnp.where(same_seq, lower, 0.0)
        carries_state = (seg == 0)[..., None]  # token still in the sequence that entered the chunk
        qd, rd = qd * carries_state, rd * carries_state
        ed = ed * (seg == seg[..., -1:])[..., None]
        dlast = dlast * (seg[..., -1] == 0)[..., None]
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


def chunk_step(state, ct: ChunkTensors):
    """One chunk of the state pass: (state [B, H, K, V], chunk tensors [B, H, C, ...]) -> (state', o).

    Vnew = U~ - W S;  O = Qd S + P Vnew;  S' = exp(G_last) S + Ed^T Vnew.  o: [B, H, C, V].
    """
    qd, w, ed, ut, p, dlast = ct
    v_new = ut - jnp.einsum("bhck,bhkv->bhcv", w, state, precision=_HIGHEST)
    o = jnp.einsum("bhck,bhkv->bhcv", qd, state, precision=_HIGHEST)
    o = o + jnp.einsum("bhij,bhjv->bhiv", p, v_new, precision=_HIGHEST)
    state = dlast[..., None] * state + jnp.einsum("bhck,bhcv->bhkv", ed, v_new, precision=_HIGHEST)
    return state, o


def scan_chunks(ct: ChunkTensors, initial_state):
    """Sequential state pass over precomputed chunk tensors.

    Args:
      ct: `ChunkTensors` with layout [B, H, NT, C, ...].
      initial_state: [B, H, K, V] fp32.

    Returns:
      (o [B, H, NT, C, V], final_state [B, H, K, V]).
    """
    xs = ChunkTensors(*(jnp.moveaxis(x, 2, 0) for x in ct))
    final_state, o = jax.lax.scan(chunk_step, initial_state, xs)
    return jnp.moveaxis(o, 0, 2), final_state


def _time_major_chunks(x, chunk_size):
    """[B, T, ...] -> [NT, B, C, ...], zero-padding T up to NT * C."""
    b, t = x.shape[:2]
    nt = num_chunks(t, chunk_size)
    x = jnp.pad(x, ((0, 0), (0, nt * chunk_size - t)) + ((0, 0),) * (x.ndim - 2))
    return jnp.swapaxes(x.reshape((b, nt, chunk_size) + x.shape[2:]), 0, 1)


def streamed_chunks(q, r, e, u, g, initial_state, reset, chunk_size, scores):
    """Chunked delta rule with each chunk's preparation inside the state-pass loop.

    Same result as `scan_chunks(prepare_chunks(...))`, but the chunk tensors of one chunk are built
    just before they are used, so they stay in cache instead of making a round trip through memory
    for the whole sequence (17-27% faster on CPU at T = 2048, B = 1 and 4). Zero padding of the last
    chunk is inert: g = 0 keeps the state, e = u = 0 writes nothing.

    Args: as `chunked_unified` (initial_state fp32). Returns (o [B, T, H, V], final_state).
    """
    t = q.shape[1]
    xs = tuple(_time_major_chunks(x, chunk_size) for x in (q, r, e, u, g))
    if reset is not None:
        xs += (_time_major_chunks(reset, chunk_size),)

    def body(state, x):
        ct = prepare_chunks(*x[:5], x[5] if reset is not None else None, chunk_size, scores)
        state, o = chunk_step(state, ChunkTensors(*(y[:, :, 0] for y in ct)))
        return state, o

    final_state, o = jax.lax.scan(body, initial_state, xs)  # o: [NT, B, H, C, V]
    return from_chunks(jnp.moveaxis(o, 0, 2), t), final_state


def two_phase_chunks(q, r, e, u, g, initial_state, reset, chunk_size, scores):
    """`prepare_chunks` for every chunk, then `scan_chunks`; same contract as `streamed_chunks`."""
    ct = prepare_chunks(q, r, e, u, g, reset, chunk_size, scores)
    o, final_state = scan_chunks(ct, initial_state)
    return from_chunks(o, q.shape[1]), final_state


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8))
def _chunked(q, r, e, u, g, state, reset, chunk_size, scores):
    """Forward-only evaluation streams the chunks (20-28% faster than two-phase on CPU, T = 2048).

    Derivatives (forward mode, and reverse mode by transposing it) are those of `two_phase_chunks`:
    autodiff of the streamed loop measured the same or up to 11% slower (CPU, B = 1 and 4,
    interleaved timing).
    """
    return streamed_chunks(q, r, e, u, g, state, reset, chunk_size, scores)


@_chunked.defjvp
def _chunked_jvp(chunk_size, scores, primals, tangents):
    *diff_primals, reset = primals
    form = functools.partial(two_phase_chunks, reset=reset, chunk_size=chunk_size, scores=scores)
    return jax.jvp(form, tuple(diff_primals), tuple(tangents[:-1]))


def chunked_unified(q, r, e, u, g, initial_state, reset=None, *, chunk_size=64):
    """Chunkwise delta rule on the unified form; same contract as `recurrent_unified`.

    Per-channel decay takes the one-matmul reference scores when every chunk's decay span allows
    it and the exact pairwise scores otherwise; the choice is one `lax.cond` around the whole
    computation, so each branch compiles (and fuses) as one straight-line program. A forward-only
    call runs `streamed_chunks`; under differentiation (either mode) the forward and its
    derivatives are those of `two_phase_chunks` (both schedules compute the same values).

    Args:
      q, r, e: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H, 1] or [B, T, H, K].
      initial_state: [B, H, K, V]; reset: optional [B, T] bool.

    Returns:
      (o [B, T, H, V], final_state [B, H, K, V]).
    """
    state = initial_state.astype(jnp.promote_types(q.dtype, jnp.float32))

    def run(scores, q, r, e, u, g, state):
        return _chunked(q, r, e, u, g, state, reset, chunk_size, scores)

    operands = (q, r, e, u, g, state)
    if g.shape[-1] == 1:
        return run("pairwise", *operands)  # per-head decay: scores are a masked matmul either way
    return jax.lax.cond(
        chunk_decay_span(g, chunk_size) <= REFERENCE_SPAN_LIMIT,
        functools.partial(run, "reference"),
        functools.partial(run, "pairwise"),
        *operands,
    )
