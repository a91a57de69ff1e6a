"""Public delta-rule API: `delta_rule` (sequences) and `delta_rule_step` (one decode token).

Argument names, meanings and layout follow flash-linear-attention's `chunk_gated_delta_rule` /
`chunk_kda`, so code written against it ports one to one:
q, k `[B, T, H, K]`, v `[B, T, HV, V]` (HV a multiple of H: grouped value heads, q/k repeated),
g log decay `[B, T, HV]` (GDN) or `[B, T, HV, K]` (KDA), beta `[B, T, HV]` or `[B, T, HV, K]`
(FG2-GDN), beta_v `[B, T, HV, V]` (FG2-GDN+), initial_state `[B, HV, K, V]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.kernels.delta_rule.chunked import chunked_unified
from jaxrl_llm.kernels.delta_rule.inputs import check_state, resets_from_segments, to_unified
from jaxrl_llm.kernels.delta_rule.pallas import pallas_delta_rule
from jaxrl_llm.kernels.delta_rule.recurrent import recurrent_unified, unified_step

IMPLS = ("recurrent", "chunked", "pallas", "auto")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _kernel_compiles_for_gpu(k: int, v: int, chunk_size: int) -> bool:
    # Triton blocks need power-of-two sizes and matmul dims of at least 16.
    return all(_is_pow2(n) and n >= 16 for n in (k, v, chunk_size))


def resolve_impl(impl: str, k: int, v: int, chunk_size: int, backend: str | None = None) -> str:
    """Maps `impl` ("auto" included) to the implementation that will run on `backend`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    backend = backend or jax.default_backend()
    if impl == "auto":
        if backend in ("gpu", "cuda", "rocm", "tpu") and _kernel_compiles_for_gpu(k, v, chunk_size):
            return "pallas"
        return "chunked"
    if impl == "pallas" and backend != "cpu" and not _kernel_compiles_for_gpu(k, v, chunk_size):
        raise ValueError(
            f"impl='pallas' compiled for {backend} needs K, V and chunk_size to be powers of two "
            f">= 16; got K={k}, V={v}, chunk_size={chunk_size}"
        )
    return impl


def delta_rule(
    q,
    k,
    v,
    g=None,
    beta=None,
    *,
    beta_v=None,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    segment_ids=None,
    use_qk_l2norm_in_kernel=False,
    impl="auto",
    chunk_size=64,
    interpret=None,
):
    """Delta-rule linear attention over whole sequences, every variant through one function.

    Args:
      q, k: [B, T, H, K] queries and keys (L2-normalise them, or set use_qk_l2norm_in_kernel).
      v: [B, T, HV, V] values; HV a multiple of H.
      g: None (DeltaNet), [B, T, HV] (Gated DeltaNet) or [B, T, HV, K] (KDA, FG2-GDN) natural-log
        decay, usually <= 0.
      beta: None (no erase/write strength: 1), [B, T, HV] writing strength, or [B, T, HV, K]
        per-channel strength (FG2-GDN: keys and values scaled by sqrt(beta); needs K == V unless
        beta_v is given).
      beta_v: optional [B, T, HV, V] value strength (FG2-GDN+), with a per-channel beta.
      scale: query scale; default K ** -0.5.
      initial_state: optional [B, HV, K, V] state before the first token (of each row's first
        sequence when packed).
      output_final_state: also return the [B, HV, K, V] fp32 state after each row's last token.
      cu_seqlens: optional [N + 1] int cumulative sequence lengths of packed sequences (B == 1).
      segment_ids: optional [B, T] int; the state resets to zero wherever the id changes.
      use_qk_l2norm_in_kernel: L2-normalise q and k over K (fp32, eps 1e-6) first.
      impl: "recurrent" (lax.scan reference), "chunked" (pure JAX WY/UT), "pallas" (fused state
        pass kernel) or "auto" (pallas on GPU/TPU when shapes allow, chunked otherwise).
      chunk_size: chunk length C for chunked/pallas, a power of two (any T: T is padded).
      interpret: Pallas interpreter on/off; None means on exactly when the default backend is CPU.

    Returns:
      (o [B, T, HV, V] in v's dtype, final_state [B, HV, K, V] fp32 or None).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two (e.g. 64); got {chunk_size!r}")
    if use_qk_l2norm_in_kernel:
        q, k = l2_normalize(q), l2_normalize(k)
    uni = to_unified(q, k, v, g, beta, beta_v, scale)
    b, t, hv, kd = uni.q.shape
    vd = uni.u.shape[-1]
    check_state("initial_state", initial_state, b, hv, kd, vd)
    reset = resets_from_segments(segment_ids, cu_seqlens, b, t)
    if initial_state is None:
        initial_state = jnp.zeros((b, hv, kd, vd), uni.q.dtype)
    initial_state = initial_state.astype(uni.q.dtype)

    impl = resolve_impl(impl, kd, vd, chunk_size)
    if impl == "recurrent":
        o, final_state = recurrent_unified(*uni, initial_state, reset)
    elif impl == "chunked":
        o, final_state = chunked_unified(*uni, initial_state, reset, chunk_size=chunk_size)
    else:
        if interpret is None:
            interpret = jax.default_backend() == "cpu"
        static_scale = kd**-0.5 if scale is None else scale
        if not isinstance(static_scale, (int, float, np.number)):
            # A traced / array scale cannot be baked into the kernel: scale the queries first.
            q, static_scale = q * jnp.asarray(scale, q.dtype), 1.0
        o, final_state = pallas_delta_rule(q, k, v, g, beta, beta_v, initial_state, float(static_scale),
                                           reset, chunk_size, interpret)
    return o.astype(v.dtype), (final_state if output_final_state else None)


def delta_rule_step(
    q, k, v, g=None, beta=None, *, state, beta_v=None, scale=None, use_qk_l2norm_in_kernel=False
):
    """One decode token on a carried state (what a sampler calls after prefill).

    Args:
      q, k: [B, H, K]; v: [B, HV, V]; g: None, [B, HV] or [B, HV, K]; beta: None, [B, HV] or
        [B, HV, K]; beta_v: optional [B, HV, V]; state: [B, HV, K, V] (fp32 recommended).

    Returns:
      (o [B, HV, V] in v's dtype, new_state [B, HV, K, V] fp32).
    """
    if use_qk_l2norm_in_kernel:
        q, k = l2_normalize(q), l2_normalize(k)
    uni = to_unified(q, k, v, g, beta, beta_v, scale, time_axis=False)
    b, hv, kd = uni.q.shape
    check_state("state", state, b, hv, kd, uni.u.shape[-1])
    new_state, o = unified_step(state.astype(uni.q.dtype), *uni)
    return o.astype(v.dtype), new_state


def l2_normalize(x, eps: float = 1e-6):
    """x * rsqrt(sum(x^2, last axis) + eps) in fp32 (fla / Qwen3-Next convention); keeps dtype."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)
