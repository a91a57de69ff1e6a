"""Pallas kernel for the sequential state pass of the chunked delta rule, with a custom VJP.

The chunk-parallel work (decay factors, Gram matrices, UT solve) is done by XLA in
`chunked.prepare_chunks`. The kernel then walks the chunks of one (batch, head, value-tile) with a
`fori_loop`, keeping the fp32 state tile `[K, BV]` as the loop carry (registers on GPU, vregs/VMEM on
TPU) and fusing the output into the same pass, so no per-chunk state is ever written to memory:

    Vnew = U~ - W S;   O = (Q exp(G)) S + P Vnew;   S <- exp(G_last) S + E~^T Vnew

Value columns of `S` are independent, so the grid is (B * H, V / BV), all programs parallel.
Only 2-D matmuls and static/aligned slices appear, which is what the Triton backend (GPU) and Mosaic
(TPU) both accept. On a CPU host the kernel runs with `interpret=True`.

The backward pass recomputes: residuals are the kernel inputs only, and the cotangents come from
the VJP of the pure-JAX chunked path (`chunked.chunked_unified`), which rebuilds the chunk states
inside the backward instead of keeping them from the forward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from jaxrl_llm.kernels.delta_rule.chunked import ChunkTensors, chunked_unified, from_chunks
from jaxrl_llm.kernels.delta_rule.chunked import prepare_chunks

_HIGHEST = jax.lax.Precision.HIGHEST
# A [K, 64] fp32 state tile is 32 KiB at K = 128: small enough to stay in registers per program.
GPU_BLOCK_V = 64


def _dot(a, b):
    return jnp.dot(a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _state_pass_kernel(
    qd_ref, w_ref, edt_ref, ut_ref, p_ref, dlast_ref, s0_ref, o_ref, sT_ref, *, chunk, key_dim, n_chunks
):
    """One program: all chunks of one (batch * head, value tile). Refs are 2-D (leading dim squeezed).

    qd_ref, w_ref: [NT * C, K]; edt_ref: [NT * K, C] (E~ transposed per chunk); ut_ref: [NT * C, BV];
    p_ref: [NT * C, C]; dlast_ref: [NT * K, 1]; s0_ref, sT_ref: [K, BV]; o_ref: [NT * C, BV].
    """

    def body(n, state):
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        keys = pl.ds(pl.multiple_of(n * key_dim, key_dim), key_dim)
        v_new = ut_ref[rows, :] - _dot(w_ref[rows, :], state)
        o = _dot(qd_ref[rows, :], state) + _dot(p_ref[rows, :], v_new)
        o_ref[rows, :] = o.astype(o_ref.dtype)
        return dlast_ref[keys, :] * state + _dot(edt_ref[keys, :], v_new)

    state = jax.lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(jnp.float32))
    sT_ref[...] = state.astype(sT_ref.dtype)


def _flatten_heads(x):
    """[B, H, NT, C, D] -> [B * H, NT * C, D]."""
    b, h, nt, c, d = x.shape
    return x.reshape(b * h, nt * c, d)


def _kernel_operands(ct: ChunkTensors):
    b, h, nt, c, k = ct.qd.shape
    edt = jnp.swapaxes(ct.ed, -1, -2).reshape(b * h, nt * k, c)
    dlast = ct.dlast.reshape(b * h, nt * k, 1)
    return (
        _flatten_heads(ct.qd),
        _flatten_heads(ct.w),
        edt,
        _flatten_heads(ct.ut),
        _flatten_heads(ct.p),
        dlast,
    )


def _state_pass(operands, s0, *, chunk, block_v, interpret, compiler_params):
    """pallas_call over grid (B * H, V / BV). s0: [B * H, K, V] fp32. Returns (o, final_state)."""
    qd, w, edt, ut, p, dlast = operands
    bh, tp, k = qd.shape
    v = ut.shape[-1]
    n_chunks = tp // chunk

    def whole(shape):
        return pl.BlockSpec((None,) + shape, lambda i, j: (i, 0, 0))

    def v_tile(rows):
        return pl.BlockSpec((None, rows, block_v), lambda i, j: (i, 0, j))

    kernel = functools.partial(_state_pass_kernel, chunk=chunk, key_dim=k, n_chunks=n_chunks)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((bh, tp, v), jnp.float32),
            jax.ShapeDtypeStruct((bh, k, v), jnp.float32),
        ),
        grid=(bh, v // block_v),
        in_specs=[
            whole((tp, k)),
            whole((tp, k)),
            whole((n_chunks * k, chunk)),
            v_tile(tp),
            whole((tp, chunk)),
            whole((n_chunks * k, 1)),
            v_tile(k),
        ],
        out_specs=(v_tile(tp), v_tile(k)),
        interpret=interpret,
        compiler_params=compiler_params,
        name="delta_rule_state_pass",
    )(qd, w, edt, ut, p, dlast, s0)


def _gpu_block_v(v):
    return GPU_BLOCK_V if v % GPU_BLOCK_V == 0 else v


def _run_kernel(q, r, e, u, g, initial_state, reset, chunk_size, interpret):
    b, t, h, _ = q.shape
    k, v = q.shape[-1], u.shape[-1]
    ct = prepare_chunks(q, r, e, u, g, reset, chunk_size)
    operands = _kernel_operands(ct)
    s0 = initial_state.astype(jnp.float32).reshape(b * h, k, v)
    call = functools.partial(_state_pass, chunk=chunk_size)
    if interpret:
        o, s_final = call(operands, s0, block_v=_gpu_block_v(v), interpret=True, compiler_params=None)
    else:
        # Backend and compiler params follow the platform being lowered for, not the host.
        triton = functools.partial(
            call,
            block_v=_gpu_block_v(v),
            interpret=False,
            compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
        )
        # Mosaic needs the lane dimension whole (or a multiple of 128): one tile over V.
        mosaic = functools.partial(
            call,
            block_v=v,
            interpret=False,
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        )
        o, s_final = jax.lax.platform_dependent(
            operands, s0, cuda=triton, rocm=triton, tpu=mosaic, default=triton
        )
    nt = ct.qd.shape[2]
    o = o.reshape(b, h, nt, chunk_size, v)
    return from_chunks(o, t), s_final.reshape(b, h, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def pallas_unified(q, r, e, u, g, initial_state, reset, chunk_size, interpret):
    """Delta rule on the unified form with the Pallas state pass; contract of `chunked_unified`.

    Args:
      q, r, e: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H, 1] or [B, T, H, K] log decay.
      initial_state: [B, H, K, V]; reset: optional [B, T] bool (True at sequence starts).
      chunk_size: C (a power of two >= 16 when compiled for GPU).
      interpret: run the kernel in the Pallas interpreter (required on CPU).

    Returns:
      (o [B, T, H, V] fp32, final_state [B, H, K, V] fp32).
    """
    return _run_kernel(q, r, e, u, g, initial_state, reset, chunk_size, interpret)


def _pallas_fwd(q, r, e, u, g, initial_state, reset, chunk_size, interpret):
    out = _run_kernel(q, r, e, u, g, initial_state, reset, chunk_size, interpret)
    return out, (q, r, e, u, g, initial_state, reset)


def _pallas_bwd(chunk_size, interpret, residuals, cotangents):
    del interpret
    *diff_inputs, reset = residuals

    def reference(q, r, e, u, g, s0):
        return chunked_unified(q, r, e, u, g, s0, reset, chunk_size=chunk_size)

    _, vjp = jax.vjp(reference, *diff_inputs)
    return (*vjp(cotangents), None)


pallas_unified.defvjp(_pallas_fwd, _pallas_bwd)
