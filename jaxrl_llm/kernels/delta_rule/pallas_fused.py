"""One Pallas kernel for the whole chunked delta-rule forward: chunk preparation and state pass.

`pallas.py`'s state-pass kernel reads chunk tensors that XLA prepared and wrote to memory (W, U~,
the decayed keys and queries, the intra-chunk attention P: ~4x the inputs in fp32). Here each
program reads the raw inputs (q, k, v, g, beta, beta_v in their own dtype and `[B, T, H, D]`
layout) of one (batch, value head, value tile), chunk by chunk, maps them to the unified form
(`inputs.py`) and builds everything in registers / shared memory before advancing the state:

    A     = strictly_lower(R E^T ⊙ decay),   P = causal(Q E^T ⊙ decay)          [C, C]
    X     = (I + A)^-1                      (forward substitution, row by row)
    W     = X (R ⊙ e^G),   U~ = X U
    Vnew  = U~ - W S;   O = (Q ⊙ e^G) S + P Vnew;   S <- e^{G_last} S + (E ⊙ e^{G_last - G})^T Vnew

so the forward's memory traffic is its inputs and outputs (compiled for an H100 at B = 8,
T = 4096, H = 16, K = V = 128 in bf16, XLA reports 8 MB of temporaries against 1.6 GB for the
two-kernel path: `tools/aot_compile_gpu.py`). Decay: per head (`G [C, 1]`, the decay matrix is
exp(G_i - G_j), masked before the exp) or per channel (`G [C, K]`, factored through the chunk's
middle row m as (Q ⊙ e^{G - G_m}) (E ⊙ e^{G_m - G})^T while the chunk's decay span is at most
`chunked.REFERENCE_SPAN_LIMIT`, and column by column with bounded exponents in the chunks where it
is not: `exact_decayed_scores`, chosen per chunk inside the kernel). `G`, the in-chunk
cumulative log decay, is a masked sum (per head) or a matmul with the causal ones matrix.

Only 2-D tiles, static iotas, masked reductions and matmuls with dimensions >= 16 appear, which is
what the Triton backend accepts; on a CPU host the kernel runs with `interpret=True`. Packed
sequences (resets) are not handled here: the caller uses the state-pass kernel for them.

Block placement (`TimeLayout`): on GPU each program reads its head straight out of `[B, T, H, D]`
(block `(Tp, squeezed head, D)`). Mosaic (TPU) wants a block's last two dimensions multiples of
(8, 128) or whole, which that block is not for H > 1, so with `mosaic_blocks=True` an array whose
block width is a multiple of 128 (q, k, v, o at K = V = 128, a per-channel g or beta) is viewed as
`[B, Tp, H * D]` and read in `(Tp, D)` column blocks, and a narrower one (a per-head g or beta
`[B, T, H, 1]`, or D = 64) is copied head-major to `[B, H, Tp, D]` by XLA (block `(Tp, D)`, both
whole). On TPU neither view is free: HBM arrays are tiled over their last two dimensions, so the
reshape is a relayout copy too, and a `[.., Tp, 1]` f32 array is stored padded to 128 lanes.
Compiled for v5e / v6e at B = 8, T = 4096, H = 16, K = V = 128 in bf16 (`tools/aot_compile_tpu.py`)
the forward shows 940 MB of temporaries: q, k, v copies (3 x 134 MB, each one extra HBM read and
write) and the two per-head gates (2 x 268 MB, 128x padded) against 558 MB of inputs and outputs;
a model that emits head-major (or lane-dense gate) arrays would avoid them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxrl_llm.kernels.delta_rule.chunked import REFERENCE_SPAN_LIMIT

_HIGHEST = jax.lax.Precision.HIGHEST


def _contract(a, b, dims, operand_dtype):
    """fp32-accumulated dot_general; operands cast to `operand_dtype` (bf16: tensor cores)."""
    precision = _HIGHEST if operand_dtype == jnp.float32 else None
    return jax.lax.dot_general(a.astype(operand_dtype), b.astype(operand_dtype), (dims, ((), ())),
                               precision=precision, preferred_element_type=jnp.float32)


def _dot(a, b, operand_dtype=jnp.float32):
    """a [M, D] . b [D, N] -> [M, N]."""
    return _contract(a, b, ((1,), (0,)), operand_dtype)


def _dot_nt(a, b, operand_dtype=jnp.float32):
    """a [M, D] . b [N, D]^T -> [M, N]."""
    return _contract(a, b, ((1,), (1,)), operand_dtype)


def _dot_tn(a, b, operand_dtype=jnp.float32):
    """a [D, M]^T . b [D, N] -> [M, N]."""
    return _contract(a, b, ((0,), (0,)), operand_dtype)


def unit_lower_inverse_rows(a):
    """(I + a)^-1 for strictly lower-triangular `a [C, C]` by forward substitution.

    Row i of X = (I + a)^-1 is e_i - sum_{j<i} a[i, j] X[j, :]; rows are filled in order with
    masked reductions (no dynamic indexing into register tiles, which Triton does not have).
    """
    c = a.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
    row_cols = jax.lax.broadcasted_iota(jnp.int32, (1, c), 1)
    a_t = a.T  # column i of a^T is row i of a

    def fill(i, x):
        a_row = jnp.sum(jnp.where(cols == i, a_t, 0.0), axis=1, keepdims=True)  # [C, 1]: a[i, :]^T
        new_row = jnp.where(row_cols == i, 1.0, 0.0) - jnp.sum(a_row * x, axis=0, keepdims=True)
        return jnp.where(rows == i, new_row, x)

    eye = jnp.where(rows == cols, 1.0, 0.0)
    return jax.lax.fori_loop(1, c, fill, eye)


class Variant(NamedTuple):
    """Static description of the inputs the fused kernel reads (see `inputs.py` for the map).

    g_channels: 1 (per-head decay, or none: zeros) or K. beta: "none", "head" or "channel" (the
    value gate is then beta itself or FG2-GDN+'s beta_v, passed as one more input).
    """

    g_channels: int
    beta: str


def exact_decayed_scores(q, r, e, big_g, columns=None):
    """(sum_d q_i e_j e^{G_i - G_j}, same with r) for i >= j, column by column; any decay span.

    q, r, e, big_g: [C, K]. Column j needs row j of e and G (masked reductions) and one exp per
    element of rows i >= j, whose exponents G_i - G_j are <= 0 for a decay g <= 0: nothing overflows
    however long the chunk's decay. C^2 K exps per chunk, so only for chunks whose span rules out
    the one-reference-row matmul. Entries above the diagonal are left for the caller to mask.
    `columns` (default C, may be traced) fills only the first `columns` columns (the rest are 0).
    """
    c = q.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, q.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)

    def column(j, acc):
        p, a = acc
        e_j = jnp.sum(jnp.where(rows == j, e, 0.0), axis=0, keepdims=True)  # [1, K]
        g_j = jnp.sum(jnp.where(rows == j, big_g, 0.0), axis=0, keepdims=True)
        factor = jnp.exp(jnp.where(rows >= j, big_g - g_j, 0.0)) * e_j  # [C, K]
        # Explicit broadcasts: Triton's select wants operands of one shape.
        p = jnp.where(cols == j, jnp.broadcast_to(jnp.sum(q * factor, axis=1, keepdims=True), (c, c)), p)
        a = jnp.where(cols == j, jnp.broadcast_to(jnp.sum(r * factor, axis=1, keepdims=True), (c, c)), a)
        return p, a

    zeros = jnp.zeros((c, c), jnp.float32)
    if columns is None:
        return jax.lax.fori_loop(0, c, column, (zeros, zeros))
    # Both bounds int32 values: Triton's scf.for wants one type for them.
    return jax.lax.fori_loop(jnp.int32(0), jnp.asarray(columns, jnp.int32), column, (zeros, zeros))


def _fused_kernel(*refs, chunk, key_dim, n_chunks, scale, variant, operand_dtype):
    """One program: every chunk of one (batch, value head, value tile). Refs are 2-D.

    Inputs, in order: q, k [Tp, K] (the program's query/key head); v [Tp, BV]; g [Tp, Kg] raw log
    decay; beta [Tp, 1] or [Tp, K] (absent for "none"); for "channel" also the value gate tile
    [Tp, BV] (beta's own columns, or beta_v's); s0 [K, BV]. Outputs: o [Tp, BV], sT [K, BV].
    """
    refs = list(refs)
    q_ref, k_ref, v_ref, g_ref = refs[:4]
    rest = refs[4:]
    beta_ref = rest.pop(0) if variant.beta != "none" else None
    gate_ref = rest.pop(0) if variant.beta == "channel" else None
    s0_ref, o_ref, sT_ref = rest
    c = chunk
    f32 = jnp.float32
    ri = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
    ci = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
    causal, strict = ri >= ci, ri > ci
    col_rows = jax.lax.broadcasted_iota(jnp.int32, (c, 1), 0)
    per_channel = variant.g_channels > 1

    mm = functools.partial(_dot, operand_dtype=operand_dtype)
    mm_nt = functools.partial(_dot_nt, operand_dtype=operand_dtype)
    mm_tn = functools.partial(_dot_tn, operand_dtype=operand_dtype)

    def body(n, state):
        rows = pl.ds(pl.multiple_of(n * c, c), c)
        q = q_ref[rows, :].astype(f32) * scale
        k = k_ref[rows, :].astype(f32)
        v = v_ref[rows, :].astype(f32)
        g = g_ref[rows, :].astype(f32)
        # The unified form (inputs.py): read key r, write key e, written value u.
        if variant.beta == "none":
            r, e, u = k, k, v
        elif variant.beta == "head":
            beta = beta_ref[rows, :].astype(f32)  # [C, 1]
            r, e, u = beta * k, k, beta * v
        else:
            r = e = jnp.sqrt(beta_ref[rows, :].astype(f32)) * k
            u = jnp.sqrt(gate_ref[rows, :].astype(f32)) * v
        # In-chunk cumulative decay G, its last row (the chunk total) and, per channel, middle row.
        g_total = jnp.sum(g, axis=0, keepdims=True)  # [1, Kg]
        if per_channel:
            big_g = _dot(jnp.where(causal, 1.0, 0.0), g)  # [C, K]
            g_mid = jnp.sum(jnp.where(col_rows <= c // 2, g, 0.0), axis=0, keepdims=True)

            # One reference row while the chunk's span allows it (exponents within +-60, clipped
            # so that an over-long chunk stays finite); column by column where it does not. A
            # loop with a data-dependent trip count (0 or C) rather than a cond: Triton lowers it.
            span = jnp.max(jnp.max(big_g, axis=0, keepdims=True) - jnp.min(big_g, axis=0, keepdims=True))
            long_span = span > REFERENCE_SPAN_LIMIT
            into_mid = jnp.exp(jnp.clip(big_g - g_mid, -REFERENCE_SPAN_LIMIT, REFERENCE_SPAN_LIMIT))
            cols = e / into_mid
            p_exact, a_exact = exact_decayed_scores(q, r, e, big_g, columns=jnp.where(long_span, jnp.int32(c), jnp.int32(0)))
            p = jnp.where(long_span, p_exact, mm_nt(q * into_mid, cols))
            a = jnp.where(long_span, a_exact, mm_nt(r * into_mid, cols))
            p, a = jnp.where(causal, p, 0.0), jnp.where(strict, a, 0.0)
            dlast = jnp.exp(g_total).T  # [K, 1]
        else:
            big_g = jnp.sum(jnp.where(causal, g.T, 0.0), axis=1, keepdims=True)  # [C, 1]
            diff = big_g - big_g.T
            decay = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)
            p = mm_nt(q, e) * decay
            a = jnp.where(strict, mm_nt(r, e) * decay, 0.0)
            dlast = jnp.exp(g_total)  # [1, 1]
        decay_in = jnp.exp(big_g)
        x = unit_lower_inverse_rows(a)
        w = mm(x, r * decay_in)
        u_tilde = mm(x, u)
        v_new = u_tilde - mm(w, state)
        o = mm(q * decay_in, state) + mm(p, v_new)
        o_ref[rows, :] = o.astype(o_ref.dtype)
        ed = e * jnp.exp(g_total - big_g)
        return dlast * state + mm_tn(ed, v_new)

    state = jax.lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(f32))
    sT_ref[...] = state.astype(sT_ref.dtype)


def _pad_time(x, t_padded):
    return x if x.shape[1] == t_padded else jnp.pad(
        x, ((0, 0), (0, t_padded - x.shape[1])) + ((0, 0),) * (x.ndim - 2))


# Mosaic's lane width: a block's last dimension must be a multiple of it (or the whole dimension).
LANES = 128


class TimeLayout(NamedTuple):
    """Where the whole-sequence block of one program (grid (B * HV, V / BV)) sits in memory.

    hv: value heads; rep: value heads per q/k head; tp: padded length; block_v: value tile BV;
    mosaic_blocks: False keeps the `[B, Tp, H, D]` arrays as given (GPU, the interpreter); True
    reads an array whose block width is a multiple of `LANES` as `[B, Tp, H * D]` column blocks
    and copies a narrower one to `[B, H, Tp, D]` (TPU: see the module docstring).
    """

    hv: int
    rep: int
    tp: int
    block_v: int
    mosaic_blocks: bool = False

    # Truncating div / rem (the indices are >= 0): `//` lowers through `sign`, which Mosaic's
    # lowering resolves per TPU generation, so a CPU host could not lower for TPU.
    def batch(self, i):
        return jax.lax.div(i, self.hv)

    def value_head(self, i):
        return jax.lax.rem(i, self.hv)

    def _columns(self, block):
        return self.mosaic_blocks and block % LANES == 0

    def _spec(self, width, block, head, col):
        """Block (Tp, `block`) of head `head(i)`, column tile `col(j)`, of an array of `width` columns."""
        if not self.mosaic_blocks:
            return pl.BlockSpec((None, self.tp, None, block),
                                lambda i, j: (self.batch(i), 0, head(i), col(j)))
        if self._columns(block):
            tiles = width // block
            return pl.BlockSpec((None, self.tp, block), lambda i, j: (self.batch(i), 0, head(i) * tiles + col(j)))
        return pl.BlockSpec((None, None, self.tp, block), lambda i, j: (self.batch(i), head(i), 0, col(j)))

    def qk_head(self, width):
        """The program's q/k head (value head // rep), all `width` columns."""
        return self._spec(width, width, lambda i: jax.lax.div(self.value_head(i), self.rep), lambda j: 0)

    def v_head(self, width):
        """The program's value head, all `width` columns (g, beta)."""
        return self._spec(width, width, self.value_head, lambda j: 0)

    def v_tile(self, width):
        """The program's value head, value tile j of `width` = V columns (v, o, the value gate)."""
        return self._spec(width, self.block_v, self.value_head, lambda j: j)

    def state(self, rows):
        return pl.BlockSpec((None, rows, self.block_v), lambda i, j: (i, 0, j))

    def arrange(self, x, tiled=False):
        """[B, T, H, D] -> padded to Tp, in the placement its specs read (`tiled`: v_tile)."""
        x = _pad_time(x, self.tp)
        if not self.mosaic_blocks:
            return x
        b, tp, h, d = x.shape
        return x.reshape(b, tp, h * d) if self._columns(self.block_v if tiled else d) else jnp.swapaxes(x, 1, 2)

    def out_shape(self, b, h, d, dtype, tiled=False):
        """The kernel-side array of an output that `restore` turns into [B, T, H, D]."""
        if not self.mosaic_blocks:
            return jax.ShapeDtypeStruct((b, self.tp, h, d), dtype)
        if self._columns(self.block_v if tiled else d):
            return jax.ShapeDtypeStruct((b, self.tp, h * d), dtype)
        return jax.ShapeDtypeStruct((b, h, self.tp, d), dtype)

    def restore(self, x, h, t):
        """Inverse of `arrange` for a kernel output of `h` heads: -> [B, T, H, D]."""
        if self.mosaic_blocks:
            x = x.reshape(x.shape[0], self.tp, h, -1) if x.ndim == 3 else jnp.swapaxes(x, 1, 2)
        return x[:, :t]


def fused_forward(q, k, v, g, beta, beta_v, scale, initial_state, *, chunk, block_v, interpret,
                  compiler_params, operand_dtype=jnp.float32, mosaic_blocks=False):
    """Forward of the delta rule from the raw inputs, in one pallas_call (no resets).

    Args:
      q, k: [B, T, H, K]; v: [B, T, HV, V]; g: [B, T, HV, Kg] (Kg = 1 or K; zeros for none);
      beta: None, [B, T, HV, 1] or [B, T, HV, K]; beta_v: None or [B, T, HV, V] (with a
      per-channel beta); scale: python float; initial_state: [B, HV, K, V]; operand_dtype: dtype
      of the matmul operands (float32, or bfloat16 for tensor cores; fp32 accumulation either way);
      mosaic_blocks: place the blocks as Mosaic (TPU) accepts them (`TimeLayout`).

    Returns:
      (o [B, T, HV, V] in v's dtype, final_state [B, HV, K, V] fp32). The grid is
      (B * HV, V / BV); each program reads its q/k head (value head // rep) directly from the
      [B, T, H, D] arrays, so nothing but padding (T up to a multiple of C) is copied (with
      `mosaic_blocks`, also the arrays narrower than 128 columns, head-major).
    """
    b, t, h, kd = q.shape
    hv, vd = v.shape[2], v.shape[3]
    nt = -(-t // chunk)
    layout = TimeLayout(hv=hv, rep=hv // h, tp=nt * chunk, block_v=block_v, mosaic_blocks=mosaic_blocks)
    variant = Variant(g_channels=g.shape[-1], beta="none" if beta is None else
                      ("head" if beta.shape[-1] == 1 else "channel"))

    inputs = [layout.arrange(q), layout.arrange(k), layout.arrange(v, tiled=True), layout.arrange(g)]
    specs = [layout.qk_head(kd), layout.qk_head(kd), layout.v_tile(vd), layout.v_head(g.shape[-1])]
    if beta is not None:
        inputs.append(layout.arrange(beta))
        specs.append(layout.v_head(beta.shape[-1]))
    if variant.beta == "channel":
        # The value gate: beta_v (FG2-GDN+) or beta itself (FG2-GDN, K == V), tiled like v.
        inputs.append(layout.arrange(beta if beta_v is None else beta_v, tiled=True))
        specs.append(layout.v_tile(vd))
    s0 = initial_state.astype(jnp.float32).reshape(b * hv, kd, vd)
    state_tile = layout.state(kd)
    kernel = functools.partial(_fused_kernel, chunk=chunk, key_dim=kd, n_chunks=nt, scale=float(scale),
                               variant=variant, operand_dtype=jnp.dtype(operand_dtype))
    o, s_final = pl.pallas_call(
        kernel,
        out_shape=(layout.out_shape(b, hv, vd, v.dtype, tiled=True),
                   jax.ShapeDtypeStruct((b * hv, kd, vd), jnp.float32)),
        grid=(b * hv, vd // block_v),
        in_specs=specs + [state_tile],
        out_specs=(layout.v_tile(vd), state_tile),
        interpret=interpret,
        compiler_params=compiler_params,
        name="delta_rule_fused_forward",
    )(*inputs, s0)
    return layout.restore(o, hv, t), s_final.reshape(b, hv, kd, vd)
