"""Argument checking and the map from each variant's arguments to the unified form.

Unified form per token (state `S` is `[K, V]`, `D = Diag(exp(g))`):

    S_t = D S_{t-1} - e (r^T D S_{t-1}) + e u^T,     o_t = S_t^T (scale * q)

    variant      g           beta                r               e             u
    DeltaNet     None        [B,T,H]             beta * k        k             beta * v
    GDN          [B,T,H]     [B,T,H]             beta * k        k             beta * v
    KDA          [B,T,H,K]   [B,T,H]             beta * k        k             beta * v
    FG2-GDN      [B,T,H,K]   [B,T,H,K] (K == V)  sqrt(beta) * k  = r           sqrt(beta) * v
    FG2-GDN+     [B,T,H,K]   [B,T,H,K] + beta_v  sqrt(beta) * k  = r           sqrt(beta_v) * v

FG2-GDN(+) follows a reconstruction of arXiv 2604.19021 (RECONSTRUCTED: the symmetric
square-root scaling of keys and values; the paper text was not available), which is KDA with
beta = 1 on the rescaled keys and values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Unified(NamedTuple):
    """Unified-form operands, compute dtype (fp32, or fp64 for fp64 inputs).

    q, r, e: [B, T, HV, K]; u: [B, T, HV, V]; g: [B, T, HV, 1] or [B, T, HV, K].
    """

    q: jax.Array
    r: jax.Array
    e: jax.Array
    u: jax.Array
    g: jax.Array


def _shape(x):
    return tuple(x.shape)


def _require_float(name, x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")


def check_qkv(q, k, v, *, time_axis: bool = True):
    """Checks q, k [B, (T,) H, K] and v [B, (T,) HV, V] with HV a multiple of H. Returns dims."""
    lead = "[B, T, H, K]" if time_axis else "[B, H, K]"
    rank = 4 if time_axis else 3
    for name, x in (("q", q), ("k", k), ("v", v)):
        _require_float(name, x)
        if x.ndim != rank:
            want = lead if name != "v" else lead.replace("H, K", "HV, V")
            raise ValueError(f"{name} must be {want}; got {_shape(x)}")
    if q.shape != k.shape:
        raise ValueError(f"k must have the shape of q {_shape(q)}; got {_shape(k)}")
    if v.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"v must share q's leading dims {_shape(q)[:-2]}; got {_shape(v)}")
    h, hv = q.shape[-2], v.shape[-2]
    if hv % h:
        raise ValueError(f"v's head count {hv} must be a multiple of q/k's head count {h}")
    return q.shape[:-2], h, hv, q.shape[-1], v.shape[-1]


def _is_per_channel(name, x, lead, hv, channels, channel_letter):
    """False for [B, (T,) HV], True for [B, (T,) HV, channels]; raises naming `name` otherwise."""
    _require_float(name, x)
    per_head, per_channel = lead + (hv,), lead + (hv, channels)
    if _shape(x) in (per_head, per_channel):
        return _shape(x) == per_channel
    dims = ", ".join(["B", "T"][: len(lead)])
    raise ValueError(
        f"{name} must be [{dims}, H] or [{dims}, H, {channel_letter}] = {per_head} or "
        f"{per_channel}; got {_shape(x)}"
    )


def to_unified(q, k, v, g, beta, beta_v, scale, *, time_axis: bool = True) -> Unified:
    """Validates arguments and maps them to the unified form (see module docstring).

    Shapes with `time_axis`: q, k [B, T, H, K]; v [B, T, HV, V]; g None, [B, T, HV] or
    [B, T, HV, K]; beta None, [B, T, HV] or [B, T, HV, K]; beta_v None or [B, T, HV, V].
    Without `time_axis` the T dimension is absent (one decode step).
    """
    lead, h, hv, kd, vd = check_qkv(q, k, v, time_axis=time_axis)
    compute = jnp.promote_types(jnp.result_type(q, k, v), jnp.float32)
    channel_beta = beta is not None and _is_per_channel("beta", beta, lead, hv, kd, "K")
    if beta_v is not None:
        _require_float("beta_v", beta_v)
        if _shape(beta_v) != lead + (hv, vd):
            raise ValueError(f"beta_v must be [.., H, V] = {lead + (hv, vd)}; got {_shape(beta_v)}")
        if not channel_beta:
            raise ValueError("beta_v (FG2-GDN+ value strength) needs a per-channel beta [.., H, K]")
    if g is not None and not _is_per_channel("g", g, lead, hv, kd, "K"):
        g = g[..., None]
    if channel_beta and beta_v is None and kd != vd:
        raise ValueError(
            f"per-channel beta [.., H, K] scales both k and v (FG2-GDN) and needs K == V; "
            f"got K={kd}, V={vd}: pass beta_v [.., H, V] for FG2-GDN+"
        )
    if scale is None:
        scale = kd**-0.5

    rep = hv // h
    q, k = (jnp.repeat(x.astype(compute), rep, axis=-2) for x in (q, k))
    v = v.astype(compute)
    g = jnp.zeros(lead + (hv, 1), compute) if g is None else g.astype(compute)
    q = q * scale
    if beta is None:
        return Unified(q, k, k, v, g)
    beta = beta.astype(compute)
    if not channel_beta:
        return Unified(q, beta[..., None] * k, k, beta[..., None] * v, g)
    k_scaled = jnp.sqrt(beta) * k
    v_gate = beta if beta_v is None else beta_v.astype(compute)
    return Unified(q, k_scaled, k_scaled, jnp.sqrt(v_gate) * v, g)


def check_state(name, state, b, hv, kd, vd):
    if state is None:
        return
    _require_float(name, state)
    if _shape(state) != (b, hv, kd, vd):
        raise ValueError(f"{name} must be [B, H, K, V] = {(b, hv, kd, vd)}; got {_shape(state)}")


def resets_from_segments(segment_ids, cu_seqlens, b, t):
    """[B, T] bool, True at every token that starts a new sequence after position 0 (or None)."""
    if segment_ids is not None and cu_seqlens is not None:
        raise ValueError("pass at most one of segment_ids and cu_seqlens")
    if segment_ids is not None:
        if _shape(segment_ids) != (b, t):
            raise ValueError(f"segment_ids must be [B, T] = {(b, t)}; got {_shape(segment_ids)}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise TypeError(f"segment_ids must be integer; got dtype {segment_ids.dtype}")
        change = segment_ids[:, 1:] != segment_ids[:, :-1]
        return jnp.pad(change, ((0, 0), (1, 0)))
    if cu_seqlens is not None:
        if cu_seqlens.ndim != 1 or not jnp.issubdtype(cu_seqlens.dtype, jnp.integer):
            raise ValueError(
                f"cu_seqlens must be a 1-D integer array [N + 1]; got {_shape(cu_seqlens)} "
                f"{cu_seqlens.dtype}"
            )
        if b != 1:
            raise ValueError(f"cu_seqlens needs packed inputs with B == 1; got B={b}")
        starts = jnp.zeros((t + 1,), bool).at[cu_seqlens[1:-1]].set(True, mode="drop")
        return starts[None, :t].at[:, 0].set(False)
    return None
