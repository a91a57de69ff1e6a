"""Fused Pallas backward of the delta rule: two kernels on the raw inputs, no chunk tensors in memory.

The forward (`pallas_fused.py`) keeps nothing but its inputs; the backward needs the state that
enters every chunk. A first kernel (`chunk_entry_states`) replays the state pass and writes those
states (`[NT, K, V]` per head, in the matmul operand dtype: the only intermediate that goes to
memory); a second one (`fused_backward`) walks the chunks from last to first carrying the state
cotangent dS and, per chunk, rebuilds the chunk's operands from the raw inputs as the forward does
(`A`, `P`, `X = (I + A)^-1`, `W`, `U~`, `Vnew`) and writes the gradients of that chunk's q, k, v,
g, beta, beta_v:

    dVnew = P^T dO + Ed dS';   dS = Qd^T dO + e^{G_last} dS' - W^T dVnew
    dQd = dO S^T;   dP = dO Vnew^T;   dEd = Vnew dS'^T;   dW = -dVnew S^T;   dU~ = dVnew
    dX = dW Rd^T + dU~ U^T;   dRd = X^T dW;   dU = X^T dU~;   dA = -X^T dX X^T

and then through the decayed scores (per head: the masked decay matrix; per channel: the one
reference row factorisation, or column by column with bounded exponents in chunks whose decay
span exceeds `REFERENCE_SPAN_LIMIT`, as in the forward) to q, r, e and the cumulative decay G,
whose in-chunk reverse cumulative sum is dg. The states make one round trip through memory
because a GPU allows nothing cheaper: a whole sequence of [K, BV] states does not fit on chip, and
a program cannot safely read back its own global-memory writes within one kernel.

Grid (B * HV, V / BV) as the forward: value columns of the state are independent, so each program
owns one value tile; the key-side gradients (q, k, g, beta) of one tile are partial sums, added up
over tiles (and over the value heads of a q/k head, GQA) by XLA. With BV = V nothing is summed and
the gradients are written in their final dtype. Only 2-D matmuls, masked reductions and aligned
dynamic slices of refs appear (what Triton accepts); on a CPU host the kernels run with
`interpret=True`. Sequence starts inside a chunk (packed inputs) become masks, as in
`chunked.prepare_chunks`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxrl_llm.kernels.delta_rule.chunked import REFERENCE_SPAN_LIMIT, num_chunks
from jaxrl_llm.kernels.delta_rule.pallas_fused import (
    TimeLayout,
    _dot,
    _dot_nt,
    _dot_tn,
    exact_decayed_scores,
    unit_lower_inverse_rows,
)

F32 = jnp.float32


class Variant(NamedTuple):
    """Static description of the kernel inputs.

    g_channels: 1 (per-head decay, or none: zeros) or K. beta: "none", "head" or "channel" (the
    value gate, beta itself or beta_v, is then one more input). packed: a segment index input
    marks sequence starts inside chunks.
    """

    g_channels: int
    beta: str
    packed: bool


class Chunk(NamedTuple):
    """One chunk's operands rebuilt from the raw inputs (fp32; C rows, BV value columns).

    q: [C, K] scaled query (None in the state pass); k, r, e: [C, K] raw key, read key, write key;
    u: [C, BV] written value; big_g: [C, Kg] in-chunk cumulative log decay; decay_in = e^G,
    decay_out = e^{G_last - G}: [C, Kg]; carry, last: [C, 1] masks (tokens of the sequence that
    enters the chunk / of its last sequence) or None; mask_a, mask_p: [C, C] where A and P live;
    a, p: [C, C]; scores: per head the [C, C] decay matrix, per channel (into_mid, cols, long_span,
    n_exact); x = (I + A)^-1; rd, qd, ed: decayed and masked r, q, e; w = X Rd, u_tilde = X U;
    dlast: [K, 1] (per channel) or [1, 1] state decay over the chunk.
    """

    q: jax.Array | None
    k: jax.Array
    r: jax.Array
    e: jax.Array
    u: jax.Array
    big_g: jax.Array
    decay_in: jax.Array
    decay_out: jax.Array
    carry: jax.Array | None
    last: jax.Array | None
    mask_a: jax.Array
    mask_p: jax.Array
    a: jax.Array
    p: jax.Array | None
    scores: tuple
    x: jax.Array
    rd: jax.Array
    qd: jax.Array | None
    ed: jax.Array
    w: jax.Array
    u_tilde: jax.Array
    dlast: jax.Array


def _unified(k, v, beta, gate, variant):
    """(r, e, u) of the unified form (`inputs.py`) from a chunk's raw k [C, K] and value tile v."""
    if variant.beta == "none":
        return k, k, v
    if variant.beta == "head":
        return beta * k, k, beta * v
    r = jnp.sqrt(beta) * k
    return r, r, jnp.sqrt(gate) * v


def _iotas(c):
    ri = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    ci = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return ri, ci


def prepare_chunk(q, k, v, g, beta, gate, seg, variant, operand_dtype):
    """Rebuilds one chunk's operands (see `Chunk`) as the fused forward does (sequence starts
    masked as in `chunked.prepare_chunks`).

    q: [C, K] scaled query or None (the state pass needs no queries); k: [C, K]; v: [C, BV];
    g: [C, Kg] raw log decay; beta: [C, 1] / [C, K] or None; gate: [C, BV] or None; seg: [C, 1]
    int32 count of sequence starts up to each row within the chunk, or None.
    """
    c = k.shape[0]
    ri, ci = _iotas(c)
    causal, strict = ri >= ci, ri > ci
    mm = functools.partial(_dot, operand_dtype=operand_dtype)
    mm_nt = functools.partial(_dot_nt, operand_dtype=operand_dtype)
    r, e, u = _unified(k, v, beta, gate, variant)
    g_total = jnp.sum(g, axis=0, keepdims=True)  # [1, Kg]
    p = None
    if variant.g_channels > 1:
        big_g = _dot(jnp.where(causal, 1.0, 0.0), g)  # [C, K]
        col_rows = jax.lax.broadcasted_iota(jnp.int32, (c, 1), 0)
        g_mid = jnp.sum(jnp.where(col_rows <= c // 2, g, 0.0), axis=0, keepdims=True)
        span = jnp.max(jnp.max(big_g, axis=0, keepdims=True) - jnp.min(big_g, axis=0, keepdims=True))
        long_span = span > REFERENCE_SPAN_LIMIT
        into_mid = jnp.exp(jnp.clip(big_g - g_mid, -REFERENCE_SPAN_LIMIT, REFERENCE_SPAN_LIMIT))
        cols = e / into_mid
        n_exact = jnp.where(long_span, jnp.int32(c), jnp.int32(0))
        p_exact, a_exact = exact_decayed_scores(r if q is None else q, r, e, big_g, columns=n_exact)
        a = jnp.where(long_span, a_exact, mm_nt(r * into_mid, cols))
        if q is not None:
            p = jnp.where(long_span, p_exact, mm_nt(q * into_mid, cols))
        dlast = jnp.exp(g_total).T  # [K, 1]
        scores = (into_mid, cols, long_span, n_exact)
    else:
        big_g = jnp.sum(jnp.where(causal, g.T, 0.0), axis=1, keepdims=True)  # [C, 1]
        decay = jnp.where(causal, jnp.exp(jnp.where(causal, big_g - big_g.T, 0.0)), 0.0)
        a = mm_nt(r, e) * decay
        if q is not None:
            p = mm_nt(q, e) * decay
        dlast = jnp.exp(g_total)  # [1, 1]
        scores = (decay,)
    mask_a, mask_p = strict, causal
    decay_in, decay_out = jnp.exp(big_g), jnp.exp(g_total - big_g)
    rd, ed = r * decay_in, e * decay_out
    qd = None if q is None else q * decay_in
    carry = last = None
    if variant.packed:
        same = jnp.broadcast_to(seg, (c, c)) == jnp.broadcast_to(seg.T, (c, c))
        mask_a, mask_p = mask_a & same, mask_p & same
        seg_last = jnp.max(seg, axis=0, keepdims=True)  # [1, 1]: starts are counted upwards
        carry = jnp.where(seg == 0, 1.0, 0.0)
        last = jnp.where(seg == seg_last, 1.0, 0.0)
        rd, ed = rd * carry, ed * last
        qd = None if qd is None else qd * carry
        dlast = dlast * jnp.where(seg_last == 0, 1.0, 0.0)
    a = jnp.where(mask_a, a, 0.0)
    p = None if p is None else jnp.where(mask_p, p, 0.0)
    x = unit_lower_inverse_rows(a)
    return Chunk(q=q, k=k, r=r, e=e, u=u, big_g=big_g, decay_in=decay_in, decay_out=decay_out,
                 carry=carry, last=last, mask_a=mask_a, mask_p=mask_p, a=a, p=p, scores=scores, x=x,
                 rd=rd, qd=qd, ed=ed, w=mm(x, rd), u_tilde=mm(x, u), dlast=dlast)


def exact_scores_backward(d_p, d_a, q, r, e, big_g, columns):
    """Cotangents (dq, dr, de) [C, K] of `exact_decayed_scores(q, r, e, G)` for masked d_p, d_a [C, C].

    Column j: dq_i += dP_ij e_j e^{G_i - G_j}, dr_i likewise with dA, and row j of de is
    sum_i (dP_ij q_i + dA_ij r_i) e^{G_i - G_j}; exponents are masked to rows i >= j (<= 0 for a
    decay g <= 0), where the masked cotangents live. `columns` (traced) bounds the loop (0 or C).
    """
    c = q.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, q.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)

    def column(j, acc):
        dq, dr, de = acc
        e_j = jnp.sum(jnp.where(rows == j, e, 0.0), axis=0, keepdims=True)  # [1, K]
        g_j = jnp.sum(jnp.where(rows == j, big_g, 0.0), axis=0, keepdims=True)
        decay = jnp.exp(jnp.where(rows >= j, big_g - g_j, 0.0))  # [C, K]
        dp_j = jnp.sum(jnp.where(cols == j, d_p, 0.0), axis=1, keepdims=True)  # [C, 1]
        da_j = jnp.sum(jnp.where(cols == j, d_a, 0.0), axis=1, keepdims=True)
        dq = dq + dp_j * decay * e_j
        dr = dr + da_j * decay * e_j
        de_j = jnp.sum((dp_j * q + da_j * r) * decay, axis=0, keepdims=True)  # [1, K]
        de = jnp.where(rows == j, jnp.broadcast_to(de_j, q.shape), de)
        return dq, dr, de

    zeros = jnp.zeros(q.shape, F32)
    return jax.lax.fori_loop(jnp.int32(0), jnp.asarray(columns, jnp.int32), column, (zeros, zeros, zeros))


def _scores_backward(ch: Chunk, d_p, d_a, operand_dtype):
    """(dq, dr, de, dG) through A = decayed_scores(r, e) and P = decayed_scores(q, e) (masked)."""
    mm = functools.partial(_dot, operand_dtype=operand_dtype)
    mm_tn = functools.partial(_dot_tn, operand_dtype=operand_dtype)
    q, r, e = ch.q, ch.r, ch.e
    if len(ch.scores) == 1:
        (decay,) = ch.scores
        d_re, d_qe = d_a * decay, d_p * decay
        dq, dr = mm(d_qe, e), mm(d_re, e)
        de = mm_tn(d_re, r) + mm_tn(d_qe, q)
        # d score_ij / d G_i = score_ij, d / d G_j = -score_ij.
        m = d_a * ch.a + d_p * ch.p
        d_g = jnp.sum(m, axis=1, keepdims=True) - jnp.sum(m, axis=0, keepdims=True).T  # [C, 1]
        return dq, dr, de, d_g
    into_mid, cols, long_span, n_exact = ch.scores
    dq_ref = mm(d_p, cols) * into_mid
    dr_ref = mm(d_a, cols) * into_mid
    de_ref = (mm_tn(d_p, q * into_mid) + mm_tn(d_a, r * into_mid)) / into_mid
    dq_x, dr_x, de_x = exact_scores_backward(d_p, d_a, q, r, e, ch.big_g, n_exact)
    dq = jnp.where(long_span, dq_x, dq_ref)
    dr = jnp.where(long_span, dr_x, dr_ref)
    de = jnp.where(long_span, de_x, de_ref)
    # G_i enters row i's factor with +1 and column j's with -1, per channel.
    return dq, dr, de, q * dq + r * dr - e * de


def _reverse_cumsum(d_big_g, per_channel):
    """dg from dG for G = in-chunk cumsum(g): dg_t = sum_{i >= t} dG_i. [C, Kg] -> [C, Kg]."""
    c = d_big_g.shape[0]
    ri, ci = _iotas(c)
    if per_channel:
        return _dot_tn(jnp.where(ri >= ci, 1.0, 0.0), d_big_g)
    return jnp.sum(jnp.where(ri <= ci, d_big_g.T, 0.0), axis=1, keepdims=True)


def _split_refs(refs, variant, n_head):
    """Splits a kernel's refs: `n_head` leading refs, then g, beta?, gate?, seg?, then the rest."""
    refs = list(refs)
    head, refs = refs[:n_head], refs[n_head:]
    g_ref = refs.pop(0)
    beta_ref = refs.pop(0) if variant.beta != "none" else None
    gate_ref = refs.pop(0) if variant.beta == "channel" else None
    seg_ref = refs.pop(0) if variant.packed else None
    return head, g_ref, beta_ref, gate_ref, seg_ref, refs


def _load(ref, rows):
    return None if ref is None else ref[rows, :].astype(F32)


def _states_kernel(*refs, chunk, key_dim, n_chunks, variant, operand_dtype):
    """One program: the state entering every chunk of one (batch * value head, value tile).

    Inputs: k [Tp, K]; v [Tp, BV]; g [Tp, Kg]; beta [Tp, 1 or K]?; gate [Tp, BV]?; seg [Tp, 1]?;
    s0 [K, BV]. Output: states [NT * K, BV] (rows n K .. n K + K - 1: the state before chunk n).
    """
    (k_ref, v_ref), g_ref, beta_ref, gate_ref, seg_ref, (s0_ref, states_ref) = _split_refs(refs, variant, 2)
    mm = functools.partial(_dot, operand_dtype=operand_dtype)
    mm_tn = functools.partial(_dot_tn, operand_dtype=operand_dtype)

    def body(n, state):
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        keys = pl.ds(pl.multiple_of(n * key_dim, key_dim), key_dim)
        states_ref[keys, :] = state.astype(states_ref.dtype)
        seg = None if seg_ref is None else seg_ref[rows, :]
        ch = prepare_chunk(None, _load(k_ref, rows), _load(v_ref, rows), _load(g_ref, rows),
                           _load(beta_ref, rows), _load(gate_ref, rows), seg, variant, operand_dtype)
        v_new = ch.u_tilde - mm(ch.w, state)
        return ch.dlast * state + mm_tn(ch.ed, v_new)

    jax.lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(F32))


def _backward_kernel(*refs, chunk, key_dim, n_chunks, scale, variant, operand_dtype, fold_gate):
    """One program: the reverse walk over every chunk of one (batch * value head, value tile).

    Inputs: q, k [Tp, K]; v [Tp, BV]; g [Tp, Kg]; beta?; gate [Tp, BV]?; seg [Tp, 1]?; do [Tp, BV];
    states [NT * K, BV]; ds_final [K, BV]. Outputs: dq, dk [Tp, K], dg [Tp, Kg], dbeta [Tp, 1 or K]?
    (key-side: partial over value tiles), dv [Tp, BV], dgate [Tp, BV]?, ds0 [K, BV]. `fold_gate`
    (FG2-GDN with BV = V = K): the value gate is beta itself, its cotangent goes into dbeta.
    """
    (q_ref, k_ref, v_ref), g_ref, beta_ref, gate_ref, seg_ref, rest = _split_refs(refs, variant, 3)
    do_ref, states_ref, dsT_ref, dq_ref, dk_ref, dg_ref = rest[:6]
    rest = rest[6:]
    dbeta_ref = rest.pop(0) if variant.beta != "none" else None
    dv_ref = rest.pop(0)
    dgate_ref = rest.pop(0) if variant.beta == "channel" and not fold_gate else None
    (ds0_ref,) = rest
    per_channel = variant.g_channels > 1
    mm = functools.partial(_dot, operand_dtype=operand_dtype)
    mm_nt = functools.partial(_dot_nt, operand_dtype=operand_dtype)
    mm_tn = functools.partial(_dot_tn, operand_dtype=operand_dtype)

    def body(i, ds):  # ds: [K, BV] cotangent of the state leaving chunk n
        n = n_chunks - 1 - i
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        keys = pl.ds(pl.multiple_of(n * key_dim, key_dim), key_dim)
        seg = None if seg_ref is None else seg_ref[rows, :]
        beta, gate = _load(beta_ref, rows), _load(gate_ref, rows)
        v = _load(v_ref, rows)
        ch = prepare_chunk(_load(q_ref, rows) * scale, _load(k_ref, rows), v, _load(g_ref, rows),
                           beta, gate, seg, variant, operand_dtype)
        s = states_ref[keys, :].astype(F32)
        d_o = _load(do_ref, rows)
        v_new = ch.u_tilde - mm(ch.w, s)
        dv_new = mm_tn(ch.p, d_o) + mm(ch.ed, ds)  # [C, BV]
        ds_in = mm_tn(ch.qd, d_o) + ch.dlast * ds - mm_tn(ch.w, dv_new)
        d_qd = mm_nt(d_o, s)  # [C, K]
        d_p = jnp.where(ch.mask_p, mm_nt(d_o, v_new), 0.0)
        d_ed = mm_nt(v_new, ds)
        d_w = -mm_nt(dv_new, s)
        d_x = mm_nt(d_w, ch.rd) + mm_nt(dv_new, ch.u)
        d_rd = mm_tn(ch.x, d_w)
        d_u = mm_tn(ch.x, dv_new)  # [C, BV]
        d_a = jnp.where(ch.mask_a, -mm_nt(mm_tn(ch.x, d_x), ch.x), 0.0)
        dq, dr, de, d_big_g = _scores_backward(ch, d_p, d_a, operand_dtype)
        in_q, in_r, out_e = d_qd * ch.decay_in, d_rd * ch.decay_in, d_ed * ch.decay_out
        if ch.carry is not None:
            in_q, in_r, out_e = in_q * ch.carry, in_r * ch.carry, out_e * ch.last
        dq, dr, de = dq + in_q, dr + in_r, de + out_e
        direct = d_qd * ch.qd + d_rd * ch.rd - d_ed * ch.ed  # [C, K]
        decay_total = d_ed * ch.ed
        d_dlast = jnp.sum(s * ds, axis=1, keepdims=True) * ch.dlast  # [K, 1]
        if per_channel:
            d_total = jnp.sum(decay_total, axis=0, keepdims=True) + d_dlast.T  # [1, K]
        else:
            direct = jnp.sum(direct, axis=1, keepdims=True)
            d_total = (jnp.sum(jnp.sum(decay_total, axis=1, keepdims=True), axis=0, keepdims=True)
                       + jnp.sum(d_dlast, axis=0, keepdims=True))  # [1, 1]
        dg = _reverse_cumsum(d_big_g + direct, per_channel) + d_total
        k = ch.k
        if variant.beta == "none":
            dk, dv = dr + de, d_u
        elif variant.beta == "head":
            dk, dv = beta * dr + de, beta * d_u
            dbeta = jnp.sum(dr * k, axis=1, keepdims=True) + jnp.sum(d_u * v, axis=1, keepdims=True)
        else:
            root = jnp.sqrt(beta)
            d_scaled = dr + de  # r = e = sqrt(beta) k
            dk, dbeta = root * d_scaled, 0.5 * d_scaled * k / root
            gate_root = jnp.sqrt(gate)
            dv = gate_root * d_u
            d_gate = 0.5 * d_u * v / gate_root
            if fold_gate:
                dbeta = dbeta + d_gate
            else:
                dgate_ref[rows, :] = d_gate.astype(dgate_ref.dtype)
        if dbeta_ref is not None:
            dbeta_ref[rows, :] = dbeta.astype(dbeta_ref.dtype)
        dq_ref[rows, :] = (scale * dq).astype(dq_ref.dtype)
        dk_ref[rows, :] = dk.astype(dk_ref.dtype)
        dg_ref[rows, :] = dg.astype(dg_ref.dtype)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        return ds_in

    ds0 = jax.lax.fori_loop(0, n_chunks, body, dsT_ref[...].astype(F32))
    ds0_ref[...] = ds0.astype(ds0_ref.dtype)


def _variant(g, beta, reset):
    return Variant(g_channels=g.shape[-1], packed=reset is not None,
                   beta="none" if beta is None else ("head" if beta.shape[-1] == 1 else "channel"))


class _Layout(TimeLayout):
    """The forward's block placement (`pallas_fused.TimeLayout`) plus the backward's own arrays."""

    def seg(self):
        return pl.BlockSpec((None, self.tp, 1), lambda i, j: (self.batch(i), 0, 0))

    def partial_shape(self, nv, b, width, dtype):
        """One value tile's share of a key-side gradient: [V / BV, B, Tp, HV, width] (as placed)."""
        if not self.mosaic_blocks:
            return jax.ShapeDtypeStruct((nv, b, self.tp, self.hv, width), dtype)
        if self._columns(width):
            return jax.ShapeDtypeStruct((nv, b, self.tp, self.hv * width), dtype)
        return jax.ShapeDtypeStruct((nv, b, self.hv, self.tp, width), dtype)

    def partial(self, width):
        if not self.mosaic_blocks:
            return pl.BlockSpec((None, None, self.tp, None, width),
                                lambda i, j: (j, self.batch(i), 0, self.value_head(i), 0))
        if self._columns(width):
            return pl.BlockSpec((None, None, self.tp, width), lambda i, j: (j, self.batch(i), 0, self.value_head(i)))
        return pl.BlockSpec((None, None, None, self.tp, width), lambda i, j: (j, self.batch(i), self.value_head(i), 0, 0))

    def restore_partial(self, part):
        """A `partial_shape` array -> [V / BV, B, Tp, HV, width]."""
        if not self.mosaic_blocks:
            return part
        nv, b = part.shape[:2]
        return part.reshape(nv, b, self.tp, self.hv, -1) if part.ndim == 4 else jnp.swapaxes(part, 2, 3)


def _side_inputs(layout, g, beta, beta_v, seg):
    """g, beta?, gate?, seg? padded to Tp, with their block specs (the order `_split_refs` reads)."""
    inputs, specs = [layout.arrange(g)], [layout.v_head(g.shape[-1])]
    if beta is not None:
        inputs.append(layout.arrange(beta))
        specs.append(layout.v_head(beta.shape[-1]))
        if beta.shape[-1] > 1:
            # The value gate: beta_v (FG2-GDN+) or beta itself (FG2-GDN, K == V), tiled like v.
            gate = beta if beta_v is None else beta_v
            inputs.append(layout.arrange(gate, tiled=True))
            specs.append(layout.v_tile(gate.shape[-1]))
    if seg is not None:
        inputs.append(seg)
        specs.append(layout.seg())
    return inputs, specs


def _segments(reset, b, t, chunk):
    """[B, Tp, 1] int32 count of sequence starts up to each position within its chunk (or None)."""
    if reset is None:
        return None
    tp = num_chunks(t, chunk) * chunk
    reset = jnp.pad(reset.astype(jnp.int32), ((0, 0), (0, tp - t)))
    return jnp.cumsum(reset.reshape(b, -1, chunk), axis=-1).reshape(b, tp, 1)


def chunk_entry_states(k, v, g, beta, beta_v, initial_state, reset=None, *, chunk, block_v, interpret,
                       compiler_params=None, operand_dtype=F32, mosaic_blocks=False):
    """The state before every chunk, by a Pallas replay of the forward's state pass.

    Args:
      k: [B, T, H, K]; v: [B, T, HV, V]; g: [B, T, HV, Kg] (Kg = 1 or K; zeros for none);
      beta: None, [B, T, HV, 1] or [B, T, HV, K]; beta_v: None or [B, T, HV, V];
      initial_state: [B, HV, K, V]; reset: optional [B, T] bool (True at each sequence start);
      mosaic_blocks: place the blocks as Mosaic (TPU) accepts them (`pallas_fused.TimeLayout`).

    Returns:
      [B * HV, NT * K, V] in `operand_dtype` (the state is carried in fp32; every use of a stored
      state in the backward but one elementwise product is as a matmul operand, cast to that dtype
      anyway); rows n K .. (n + 1) K - 1 hold the state entering chunk n.
    """
    b, t, h, kd = k.shape
    hv, vd = v.shape[2], v.shape[3]
    nt = num_chunks(t, chunk)
    layout = _Layout(hv=hv, rep=hv // h, tp=nt * chunk, block_v=block_v, mosaic_blocks=mosaic_blocks)
    variant = _variant(g, beta, reset)
    side, side_specs = _side_inputs(layout, g, beta, beta_v, _segments(reset, b, t, chunk))
    kernel = functools.partial(_states_kernel, chunk=chunk, key_dim=kd, n_chunks=nt, variant=variant,
                               operand_dtype=jnp.dtype(operand_dtype))
    s0 = initial_state.astype(F32).reshape(b * hv, kd, vd)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b * hv, nt * kd, vd), operand_dtype),
        grid=(b * hv, vd // block_v),
        in_specs=[layout.qk_head(kd), layout.v_tile(vd)] + side_specs + [layout.state(kd)],
        out_specs=layout.state(nt * kd),
        interpret=interpret,
        compiler_params=compiler_params,
        name="delta_rule_chunk_states",
    )(layout.arrange(k), layout.arrange(v, tiled=True), *side, s0)


def _sum_partial(part, t, rep, dtype):
    """[NV, B, Tp, HV, W] partial sums -> [B, T, HV / rep, W] in `dtype` (GQA heads summed)."""
    nv, b, tp, hv, w = part.shape
    if nv == 1 and rep == 1:
        return part[0, :, :t].astype(dtype)
    part = part.astype(F32).reshape(nv, b, tp, hv // rep, rep, w)
    return jnp.sum(part, axis=(0, 4))[:, :t].astype(dtype)


def fused_backward(q, k, v, g, beta, beta_v, initial_state, scale, reset, d_o, d_state, *, chunk,
                   block_v, interpret, compiler_params=None, operand_dtype=F32, mosaic_blocks=False):
    """Gradients of `pallas_fused.fused_forward`'s outputs (and of the packed state-pass path).

    Args:
      q, k: [B, T, H, K]; v: [B, T, HV, V]; g: [B, T, HV, Kg] (Kg = 1 or K); beta: None,
      [B, T, HV, 1] or [B, T, HV, K]; beta_v: None or [B, T, HV, V] (with a per-channel beta);
      initial_state: [B, HV, K, V]; scale: python float; reset: optional [B, T] bool;
      d_o: [B, T, HV, V] cotangent of o; d_state: [B, HV, K, V] cotangent of the final state;
      block_v: value tile BV (divides V); operand_dtype: matmul operand dtype (fp32 accumulation);
      mosaic_blocks: place the blocks as Mosaic (TPU) accepts them (`pallas_fused.TimeLayout`:
      column blocks of `[B, Tp, H * D]` where a block is 128-lane aligned, else head-major copies).

    Returns:
      (dq, dk, dv, dg, dbeta, dbeta_v, d_initial_state), each in its input's shape and dtype
      (dbeta, dbeta_v None where the input is).
    """
    b, t, h, kd = q.shape
    hv, vd = v.shape[2], v.shape[3]
    if vd % block_v:
        raise ValueError(f"block_v must divide V = {vd}; got {block_v}")
    nt, nv, rep = num_chunks(t, chunk), vd // block_v, hv // h
    tp = nt * chunk
    layout = _Layout(hv=hv, rep=rep, tp=tp, block_v=block_v, mosaic_blocks=mosaic_blocks)
    variant = _variant(g, beta, reset)
    opts = dict(chunk=chunk, interpret=interpret, compiler_params=compiler_params,
                operand_dtype=operand_dtype, mosaic_blocks=mosaic_blocks)
    states = chunk_entry_states(k, v, g, beta, beta_v, initial_state, reset, block_v=block_v, **opts)
    side, side_specs = _side_inputs(layout, g, beta, beta_v, _segments(reset, b, t, chunk))

    def partial_out(width, dtype):
        final = nv == 1 and dtype is not None
        return layout.partial_shape(nv, b, width, dtype if final else F32)

    qk_dtype = q.dtype if rep == 1 else None  # GQA: the value heads of a q/k head are summed
    out_shape = [partial_out(kd, qk_dtype), partial_out(kd, qk_dtype), partial_out(g.shape[-1], g.dtype)]
    out_specs = [layout.partial(kd), layout.partial(kd), layout.partial(g.shape[-1])]
    channel = variant.beta == "channel"
    # FG2-GDN's beta also gates the values: the kernel adds both parts when it holds all of V.
    fold_gate = channel and beta_v is None and nv == 1
    if beta is not None:
        out_shape.append(partial_out(beta.shape[-1], beta.dtype))
        out_specs.append(layout.partial(beta.shape[-1]))
    out_shape.append(layout.out_shape(b, hv, vd, v.dtype, tiled=True))
    out_specs.append(layout.v_tile(vd))
    if channel and not fold_gate:
        gate = beta if beta_v is None else beta_v
        out_shape.append(layout.out_shape(b, hv, vd, F32 if beta_v is None else gate.dtype, tiled=True))
        out_specs.append(layout.v_tile(vd))
    out_shape.append(jax.ShapeDtypeStruct((b * hv, kd, vd), F32))
    out_specs.append(layout.state(kd))

    kernel = functools.partial(_backward_kernel, chunk=chunk, key_dim=kd, n_chunks=nt, scale=float(scale),
                               variant=variant, operand_dtype=jnp.dtype(operand_dtype), fold_gate=fold_gate)
    in_specs = ([layout.qk_head(kd), layout.qk_head(kd), layout.v_tile(vd)] + side_specs
                + [layout.v_tile(vd), layout.state(nt * kd), layout.state(kd)])
    outs = list(pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(b * hv, nv),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        interpret=interpret,
        compiler_params=compiler_params,
        name="delta_rule_fused_backward",
    )(layout.arrange(q), layout.arrange(k), layout.arrange(v, tiled=True), *side,
      layout.arrange(d_o, tiled=True), states,
      d_state.astype(F32).reshape(b * hv, kd, vd)))

    next_partial = lambda: layout.restore_partial(outs.pop(0))  # noqa: E731
    dq = _sum_partial(next_partial(), t, rep, q.dtype)
    dk = _sum_partial(next_partial(), t, rep, k.dtype)
    dg = _sum_partial(next_partial(), t, 1, g.dtype)
    dbeta = dbeta_v = None
    if beta is not None:
        dbeta = _sum_partial(next_partial(), t, 1, F32 if channel and not fold_gate else beta.dtype)
    dv = layout.restore(outs.pop(0), hv, t)
    if channel and not fold_gate:
        d_gate = layout.restore(outs.pop(0), hv, t)
        if beta_v is None:
            dbeta = (dbeta + d_gate).astype(beta.dtype)
        else:
            dbeta, dbeta_v = dbeta.astype(beta.dtype), d_gate
    d_initial = outs.pop(0).reshape(b, hv, kd, vd).astype(initial_state.dtype)
    return dq, dk, dv, dg, dbeta, dbeta_v, d_initial
