"""The delta rule through Pallas: kernel choice, the state-pass kernel, and the custom VJP.

`pallas_delta_rule` runs the fused forward kernel (`pallas_fused.py`: chunk preparation and state
pass in one kernel, reading the raw inputs) on GPU and in the interpreter, except for packed
sequences; those, and TPU unless `kernel="fused"` asks for the Mosaic-placed blocks
(`pallas_fused.TimeLayout`), take the state-pass kernel defined here:

The chunk-parallel work (decay factors, Gram matrices, UT solve) is done by XLA in
`chunked.prepare_chunks`. The kernel then walks the chunks of one (batch, head, value-tile) with a
`fori_loop`, keeping the fp32 state tile `[K, BV]` as the loop carry (registers on GPU, vregs/VMEM on
TPU) and fusing the output into the same pass, so no per-chunk state is ever written to memory:

    Vnew = U~ - W S;   O = (Q exp(G)) S + P Vnew;   S <- exp(G_last) S + E~^T Vnew

Value columns of `S` are independent, so the grid is (B * H, V / BV), all programs parallel.
Only 2-D matmuls and static/aligned slices appear, which is what the Triton backend (GPU) and Mosaic
(TPU) both accept. On a CPU host the kernel runs with `interpret=True`.

The backward pass recomputes: residuals are the kernel inputs only. `backward="auto"` (default)
runs the fused backward kernels (`pallas_backward.py`: a Pallas replay that writes the state
entering each chunk, then a reverse walk over the chunks) on GPU and in the interpreter, and the
VJP of the pure-JAX chunked path (`chunked.chunked_unified`) on TPU; "pallas" forces the kernels
(on TPU too), "chunked" the VJP.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from jaxrl_llm.kernels.delta_rule.chunked import ChunkTensors, chunked_unified, from_chunks, prepare_chunks
from jaxrl_llm.kernels.delta_rule.inputs import to_unified
from jaxrl_llm.kernels.delta_rule.pallas_backward import fused_backward
from jaxrl_llm.kernels.delta_rule.pallas_fused import fused_forward

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


# The fused kernels on TPU hold one head's whole sequence in VMEM, double-buffered: at T = 4096,
# K = V = 128 the backward needs 34 MB, over v5e's 16 MB / v6e's 32 MB default scoped limit
# (`tools/aot_compile_tpu.py`); v5e / v6e have 128 MiB of VMEM.
TPU_FUSED_VMEM_BYTES = 64 * 2**20


def _fused_mosaic_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"),
                                vmem_limit_bytes=TPU_FUSED_VMEM_BYTES)


def _gpu_block_v(v):
    return GPU_BLOCK_V if v % GPU_BLOCK_V == 0 else v


# The backward kernels take the whole V (up to 128) per program: with smaller tiles every tile
# repeats the key-side work (A, P, the solve, all [C, K] cotangents) and the key-side gradients
# become fp32 partial sums in memory (H100 compile at B = 8, T = 4096, H = 16, K = V = 128: 1.6 GB
# of temporaries with BV = 64 against 0.7 GB with BV = 128; `tools/aot_compile_gpu.py`).
GPU_BACKWARD_BLOCK_V = 128


def _backward_block_v(v, block_v=None):
    """The backward kernels' value tile: `block_v` if given, else V up to GPU_BACKWARD_BLOCK_V."""
    if block_v is None:
        return v if v <= GPU_BACKWARD_BLOCK_V or v % GPU_BACKWARD_BLOCK_V else GPU_BACKWARD_BLOCK_V
    if not isinstance(block_v, int) or block_v < 1 or v % block_v:
        raise ValueError(f"backward_block_v must be a positive divisor of V = {v}; got {block_v!r}")
    return block_v


def _state_pass_kernel_path(q, r, e, u, g, initial_state, reset, chunk_size, interpret):
    """Chunk preparation in XLA, then the state-pass kernel (any decay span, packed sequences)."""
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


def _per_channel(x):
    """A validated g or beta with a channel axis ([B, T, HV, K]); per head is [B, T, HV]."""
    return x is not None and x.ndim == 4


def _kernel_gates(g, beta, v):
    """g as [B, T, HV, Kg] (zeros for none) and beta as None or [B, T, HV, 1 or K]: kernel inputs."""
    b, t, hv = v.shape[:3]
    g4 = jnp.zeros((b, t, hv, 1), jnp.float32) if g is None else (g if _per_channel(g) else g[..., None])
    return g4, None if beta is None else (beta if _per_channel(beta) else beta[..., None])


def _fused_kernel_path(q, k, v, g, beta, beta_v, initial_state, scale, chunk_size, interpret, tpu=False):
    """The single fused kernel on the raw inputs (no resets); `tpu`: Mosaic blocks and params."""
    vd = v.shape[3]
    g4, beta4 = _kernel_gates(g, beta, v)
    if tpu:
        params, block_v = _fused_mosaic_params(), vd  # Mosaic: whole lane dimension per block
    else:
        params = None if interpret else plt.CompilerParams(num_warps=4, num_stages=1)
        block_v = _gpu_block_v(vd)
    # bf16 models get bf16 matmul operands (tensor cores; fp32 accumulation and state): 0.3-0.4%
    # relative error against a float64 recurrence on the same bf16 inputs, vs 0.17% with fp32.
    low = all(x.dtype == jnp.bfloat16 for x in (q, k, v))
    return fused_forward(q, k, v, g4, beta4, beta_v, scale, initial_state, chunk=chunk_size,
                         block_v=block_v, interpret=interpret, compiler_params=params,
                         operand_dtype=jnp.bfloat16 if low else jnp.float32, mosaic_blocks=tpu)


def _unified_state_pass(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret):
    uni = to_unified(q, k, v, g, beta, beta_v, scale)
    o, s = _state_pass_kernel_path(*uni, initial_state.astype(uni.q.dtype), reset, chunk_size, interpret)
    return o.astype(v.dtype), s


def _fused_or_state_pass(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret,
                         tpu=False):
    """The fused kernel, or the state-pass kernel for packed sequences."""
    if reset is not None:
        return _unified_state_pass(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size,
                                   interpret)
    return _fused_kernel_path(q, k, v, g, beta, beta_v, initial_state, scale, chunk_size, interpret, tpu)


KERNELS = ("auto", "fused", "state_pass")


def _run_kernel(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret, kernel="auto"):
    """Forward through the Pallas kernels; returns (o [B, T, HV, V] in v's dtype, final_state fp32).

    kernel: "auto" (GPU and the interpreter: fused, or the state pass for packed sequences; TPU:
    the state pass), "fused" (refuses resets; on TPU the Mosaic-placed blocks) or "state_pass".
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
    args = (q, k, v, g, beta, beta_v, initial_state)
    opts = dict(scale=scale, reset=reset, chunk_size=chunk_size)
    if kernel == "state_pass":
        return _unified_state_pass(*args, **opts, interpret=interpret)
    if kernel == "fused" and reset is not None:
        raise ValueError("the fused kernel does not take packed sequences (reset); use kernel='state_pass'")
    if interpret:
        return _fused_or_state_pass(*args, **opts, interpret=True)
    gpu = functools.partial(_fused_or_state_pass, **opts, interpret=False)
    # TPU runs the fused kernel only when asked: it compiles (tools/aot_compile_tpu.py) but its
    # Mosaic block placement copies q/k/v and pads per-head gates (940 MB of temporaries against
    # 558 MB of inputs + outputs at B=8, T=4096, H=16), it holds a head's whole sequence in VMEM
    # (beyond T ~ 7.5K it will not fit), and it has not been timed against the state pass on a TPU.
    if kernel == "fused":
        tpu = functools.partial(_fused_or_state_pass, **opts, interpret=False, tpu=True)
    else:
        tpu = functools.partial(_unified_state_pass, **opts, interpret=False)
    return jax.lax.platform_dependent(*args, cuda=gpu, rocm=gpu, tpu=tpu, default=gpu)


BACKWARDS = ("auto", "pallas", "chunked")


def _check_backward(backward):
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}; got {backward!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 9, 10, 11, 12, 13))
def pallas_delta_rule(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret,
                      kernel="auto", backward="auto", backward_block_v=None):
    """Delta rule through the Pallas kernels, on the raw (validated) `delta_rule` arguments.

    Args:
      q, k: [B, T, H, K]; v: [B, T, HV, V]; g: None, [B, T, HV] or [B, T, HV, K]; beta: None,
      [B, T, HV] or [B, T, HV, K]; beta_v: None or [B, T, HV, V]; initial_state: [B, HV, K, V];
      scale: python float; reset: optional [B, T] bool; chunk_size: C (a power of two >= 16 when
      compiled for GPU); interpret: run in the Pallas interpreter (required on CPU); kernel: see
      `_run_kernel`; backward: "auto" (the fused backward kernels on GPU and in the interpreter,
      the chunked JAX VJP on TPU), "pallas" (the kernels everywhere, Mosaic-placed on TPU) or
      "chunked";
      backward_block_v: value tile of the backward kernels (None: `_backward_block_v`).

    Returns:
      (o [B, T, HV, V] in v's dtype, final_state [B, HV, K, V] fp32). The backward keeps only the
      inputs and recomputes.
    """
    _check_backward(backward)
    return _run_kernel(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret, kernel)


def _pallas_fwd(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret, kernel,
                backward, backward_block_v):
    _check_backward(backward)
    out = _run_kernel(q, k, v, g, beta, beta_v, initial_state, scale, reset, chunk_size, interpret, kernel)
    return out, (q, k, v, g, beta, beta_v, initial_state, reset)


def _chunked_backward(diff_inputs, cotangents, *, scale, reset, chunk_size, block_v=None):
    """Cotangents of every differentiable input through the VJP of the chunked JAX path."""
    del block_v  # the chunked path has no value tiles

    def reference(q, k, v, g, beta, beta_v, s0):
        uni = to_unified(q, k, v, g, beta, beta_v, scale)
        o, s = chunked_unified(*uni, s0.astype(uni.q.dtype), reset, chunk_size=chunk_size)
        return o.astype(v.dtype), s

    _, vjp = jax.vjp(reference, *diff_inputs)
    return vjp(cotangents)


def _kernel_backward(diff_inputs, cotangents, *, scale, reset, chunk_size, interpret, block_v, tpu=False):
    """Cotangents of every differentiable input through the fused backward kernels."""
    q, k, v, g, beta, beta_v, s0 = diff_inputs
    d_o, d_state = cotangents
    vd = v.shape[3]
    g4, beta4 = _kernel_gates(g, beta, v)
    if tpu:
        params = _fused_mosaic_params()
    else:
        # 8 warps (untuned: no GPU here): the carried cotangent tile is [K, BV] = [128, 128] fp32.
        params = None if interpret else plt.CompilerParams(num_warps=8, num_stages=1)
    low = all(x.dtype == jnp.bfloat16 for x in (q, k, v))  # as the forward: bf16 matmul operands
    dq, dk, dv, dg, dbeta, dbeta_v, ds0 = fused_backward(
        q, k, v, g4, beta4, beta_v, s0, scale, reset, d_o, d_state, chunk=chunk_size,
        block_v=_backward_block_v(vd, block_v), interpret=interpret, compiler_params=params,
        operand_dtype=jnp.bfloat16 if low else jnp.float32, mosaic_blocks=tpu)
    dg = None if g is None else (dg if _per_channel(g) else dg[..., 0])
    dbeta = None if beta is None else (dbeta if _per_channel(beta) else dbeta[..., 0])
    return dq, dk, dv, dg, dbeta, dbeta_v, ds0


def _pallas_bwd(scale, chunk_size, interpret, kernel, backward, backward_block_v, residuals, cotangents):
    del kernel
    *diff_inputs, reset = residuals
    opts = dict(scale=scale, reset=reset, chunk_size=chunk_size, block_v=backward_block_v)
    chunked = functools.partial(_chunked_backward, **opts)
    if backward == "chunked":
        grads = chunked(diff_inputs, cotangents)
    elif interpret:
        grads = _kernel_backward(diff_inputs, cotangents, **opts, interpret=True)
    else:
        gpu = functools.partial(_kernel_backward, **opts, interpret=False)
        # On TPU "auto" keeps the chunked VJP, for the reasons `_run_kernel` gives for the forward.
        tpu = (functools.partial(_kernel_backward, **opts, interpret=False, tpu=True) if backward == "pallas"
               else chunked)
        grads = jax.lax.platform_dependent(diff_inputs, cotangents, cuda=gpu, rocm=gpu, tpu=tpu,
                                           default=gpu)
    return (*grads, None)


pallas_delta_rule.defvjp(_pallas_fwd, _pallas_bwd)
