"""Delta-rule token mixers: Gated DeltaNet (Qwen3-Next layout), KDA, FG2-GDN and FG2-GDN+.

Every mixer maps `x [B, T, D]` to `(y [B, T, D], new_state)` with
`state = (conv_state [B, W - 1, C_conv], recurrent_state [B, HV, K, V] fp32)`, so a sampler can
prefill a prompt and then feed one token at a time. Common pipeline:

    projections -> depthwise causal conv (width W, SiLU) over [q | k | v] -> L2-normalised q, k
    -> decay g <= 0 and strength beta -> delta rule -> gated RMSNorm per head -> output projection

`GatedDeltaNet` matches Hugging Face `Qwen3NextGatedDeltaNet` op for op (weights map one to one:
see `docs/delta_rule.md`). `KimiDeltaAttention` follows the fla KDA layer (per-channel decay,
sigmoid-gated norm); the three separate short convolutions of fla are one depthwise conv over the
concatenated channels, which is the same operation. `FG2GatedDeltaNet` replaces KDA's per-head
beta by a per-channel one (and, with `decoupled=True`, a separate value strength: FG2-GDN+);
its parameterisation is RECONSTRUCTED from the paper's abstract (arXiv 2604.19021).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_llm.kernels.delta_rule import delta_rule, delta_rule_step
from jaxrl_llm.models.linear import linear, weight_as
from jaxrl_llm.models.params import constant_param, normal_param

DeltaState = tuple[jax.Array, jax.Array]


def _param(value, axes) -> nnx.Param:
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _decay_params(rngs, n_heads, n_bias, dtype, a_range):
    """(A_log [HV], dt_bias [n_bias]) with fla's init: A ~ U(a_range), dt log-uniform [1e-3, 0.1]."""
    a = jax.random.uniform(rngs.params(), (n_heads,), jnp.float32, *a_range)
    dt = jnp.exp(
        jax.random.uniform(rngs.params(), (n_bias,), jnp.float32, math.log(1e-3), math.log(0.1))
    )
    dt = jnp.maximum(dt, 1e-4)
    dt_bias = dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus
    return _param(jnp.log(a).astype(dtype), ("heads",)), _param(dt_bias.astype(dtype), ("heads",))


def log_decay(a, a_log, dt_bias):
    """g = -exp(A_log) * softplus(a + dt_bias) in fp32 (Qwen3-Next / fla); broadcasts over heads."""
    a32 = a.astype(jnp.float32) + dt_bias.astype(jnp.float32)
    return -jnp.exp(a_log.astype(jnp.float32)) * jax.nn.softplus(a32)


def causal_depthwise_conv(x, weight, conv_state, segment_ids=None):
    """Depthwise causal conv (cross-correlation, no bias) continuing from `conv_state`.

    Args:
      x: [B, T, C] inputs; weight: [C, W] (tap W - 1 multiplies the current token, as in torch),
        a plain array or a quantized leaf.
      conv_state: [B, W - 1, C] the previous W - 1 inputs (zeros at a sequence start).
      segment_ids: optional [B, T] int; taps never reach across a change of id (the carried state
        counts as part of each row's first sequence).

    Returns:
      (y [B, T, C] in x's dtype, new_conv_state [B, W - 1, C]: last W - 1 inputs of the last sequence).
    """
    width = weight.shape[1]
    t = x.shape[1]
    padded = jnp.concatenate([conv_state.astype(x.dtype), x], axis=1)  # [B, W - 1 + T, C]
    w = weight_as(weight, jnp.float32)  # the taps may be a quantized leaf
    taps = [padded[:, i : i + t].astype(jnp.float32) for i in range(width)]
    if segment_ids is not None:
        seg = jnp.concatenate([jnp.repeat(segment_ids[:, :1], width - 1, axis=1), segment_ids], 1)
        taps = [tap * (seg[:, i : i + t] == segment_ids)[..., None] for i, tap in enumerate(taps)]
    y = sum(tap * w[:, i] for i, tap in enumerate(taps))
    new_state = padded[:, t:]
    if segment_ids is not None:
        keep = seg[:, t:] == segment_ids[:, -1:]
        new_state = new_state * keep[..., None].astype(new_state.dtype)
    return y.astype(x.dtype), new_state


def gated_rms_norm(x, gate, weight, eps, activation):
    """RMSNorm over the last axis in fp32, times weight, times act(gate) (norm before gate).

    x, gate: [..., V]; weight: [V]. Matches `Qwen3NextRMSNormGated` (activation "silu") and fla's
    `FusedRMSNormGated` (activation "sigmoid" for KDA).
    """
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    y = weight_as(weight, dtype) * x32.astype(dtype)
    act = jax.nn.silu if activation == "silu" else jax.nn.sigmoid
    return (y * act(gate.astype(jnp.float32))).astype(dtype)


class _DeltaMixer(nnx.Module):
    """Shared conv / state / kernel plumbing.

    Subclasses define `project(x [B, T, D]) -> (mixed [B, T, C_conv] = [q | k | v] before the conv,
    extras)` and `gates(x, extras) -> (g, beta, beta_v or None, output gate [B, T, HV, V])`.
    """

    gate_activation = "silu"

    def __init__(self, hidden_size, num_k_heads, num_v_heads, head_k_dim, head_v_dim, *, conv_kernel_size,
                 norm_eps, impl, chunk_size, dtype, param_dtype, rngs):
        if num_v_heads % num_k_heads:
            raise ValueError(
                f"num_v_heads ({num_v_heads}) must be a multiple of num_k_heads ({num_k_heads})"
            )
        self.hidden_size = hidden_size
        self.num_k_heads, self.num_v_heads = num_k_heads, num_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.conv_kernel_size = conv_kernel_size
        self.norm_eps, self.impl, self.chunk_size = norm_eps, impl, chunk_size
        self.dtype = dtype
        # Conv taps are tiny and their channels are q|k|v concatenated: keep them replicated.
        self.conv1d = _param(
            (jax.random.uniform(rngs.params(), (self.conv_dim, conv_kernel_size), jnp.float32, -1, 1)
             / math.sqrt(conv_kernel_size)).astype(param_dtype),
            (None, "conv"),
        )
        self.norm = constant_param(1.0, (head_v_dim,), ("head_dim",), param_dtype)
        self.out_proj = normal_param(rngs, (self.value_dim, hidden_size), ("heads", "embed"), param_dtype)

    def init_state(self, batch_size: int) -> DeltaState:
        """Zero (conv_state [B, W - 1, C_conv], recurrent_state [B, HV, K, V] fp32)."""
        return (
            jnp.zeros((batch_size, self.conv_kernel_size - 1, self.conv_dim), self.dtype),
            jnp.zeros((batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim), jnp.float32),
        )

    def _check_input(self, x, segment_ids, state, padding_mask):
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}]; got {tuple(x.shape)}")
        for name, a in (("segment_ids", segment_ids), ("padding_mask", padding_mask)):
            if a is not None and tuple(a.shape) != tuple(x.shape[:2]):
                raise ValueError(f"{name} must be [B, T] = {tuple(x.shape[:2])}; got {tuple(a.shape)}")
        if state is not None:
            want = jax.tree.map(jnp.shape, self.init_state(x.shape[0]))
            got = jax.tree.map(jnp.shape, tuple(state))
            if want != got:
                raise ValueError(f"state must be (conv_state, recurrent_state) of shapes {want}; got {got}")

    def __call__(self, x, *, segment_ids=None, state: DeltaState | None = None, padding_mask=None):
        """x: [B, T, D] -> (y [B, T, D], (conv_state, recurrent_state)).

        segment_ids: optional [B, T] int; conv taps and the recurrent state reset where the id
          changes (the carried `state` counts as part of each row's first sequence).
        state: optional (conv_state [B, W - 1, C_conv], recurrent_state [B, HV, K, V]); zeros if None.
        padding_mask: optional [B, T] bool, True at real tokens. Padding tokens, wherever they sit,
          touch neither the conv window nor the recurrent state and never split a segment; their
          outputs are finite but meaningless.
        """
        self._check_input(x, segment_ids, state, padding_mask)
        state = self.init_state(x.shape[0]) if state is None else tuple(state)
        if padding_mask is None:
            return self._mix(x, segment_ids, state, None)
        layout = real_tokens_first(padding_mask, segment_ids)
        y, new_state = self._mix(take_rows(x, layout.order), layout.segments, state, layout)
        return take_rows(y, jnp.argsort(layout.order, axis=1)), new_state

    def _mix(self, x, segment_ids, state, layout):
        """The mixer pipeline; with a `RealFirst` layout, trailing padding leaves the state as is."""
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        conv_state, rec_state = state
        mixed, extras = self.project(x)
        conv_out, new_conv = causal_depthwise_conv(mixed, self.conv1d.get_value(), conv_state, segment_ids)
        if layout is not None:
            new_conv = last_conv_inputs(conv_state, mixed, segment_ids, layout.n_real)
        conv_out = jax.nn.silu(conv_out.astype(jnp.float32)).astype(self.dtype)
        q, k, v = jnp.split(conv_out, [self.key_dim, 2 * self.key_dim], axis=-1)
        q = q.reshape(b, t, self.num_k_heads, self.head_k_dim)
        k = k.reshape(b, t, self.num_k_heads, self.head_k_dim)
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)
        g, beta, beta_v, gate = self.gates(x, extras)
        if layout is not None:
            # Decay 0 and strength 0 leave the recurrent state exactly as it was.
            g, beta, beta_v = (_zero_padding(a, layout.live) for a in (g, beta, beta_v))
        o, rec_state = self._recurrence(q, k, v, g, beta, beta_v, rec_state, segment_ids)
        o = gated_rms_norm(o, gate, self.norm.get_value(), self.norm_eps, self.gate_activation)
        y = linear(o.reshape(b, t, self.value_dim), self.out_proj.get_value())
        return y, (new_conv, rec_state)

    def _recurrence(self, q, k, v, g, beta, beta_v, state, segment_ids):
        """Delta rule from `state`: the one-token step for T = 1 (no boundary possible), else the kernel."""
        kwargs = dict(use_qk_l2norm_in_kernel=True)
        if q.shape[1] == 1:
            o, state = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state=state,
                                       beta_v=None if beta_v is None else beta_v[:, 0], **kwargs)
            return o[:, None], state
        return delta_rule(q, k, v, g, beta, beta_v=beta_v, initial_state=state, output_final_state=True,
                          segment_ids=segment_ids, impl=self.impl, chunk_size=self.chunk_size, **kwargs)


class RealFirst(NamedTuple):
    """A row permutation that brings each row's real tokens to the front (stable order).

    order: [B, T] source column of each gathered column. live: [B, T] gathered column is real.
    segments: [B, T] gathered segment ids, padding filled with the row's last real id (so the
    kernel sees no boundary there). n_real: [B] number of real tokens.
    """

    order: jax.Array
    live: jax.Array
    segments: jax.Array
    n_real: jax.Array


def take_rows(x, index):
    """x [B, T, ...] gathered along T by index [B, T']."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def real_tokens_first(padding_mask, segment_ids=None) -> RealFirst:
    """Layout of `padding_mask [B, T]` (True = real); `segment_ids [B, T]` default all zero."""
    t = padding_mask.shape[1]
    real = padding_mask.astype(bool)
    if segment_ids is None:
        segment_ids = jnp.zeros(real.shape, jnp.int32)
    n_real = jnp.sum(real, axis=1, dtype=jnp.int32)
    order = jnp.argsort(jnp.logical_not(real).astype(jnp.int32), axis=1, stable=True)
    segments = take_rows(segment_ids, order)
    live = jnp.arange(t, dtype=jnp.int32)[None, :] < n_real[:, None]
    last = take_rows(segments, jnp.maximum(n_real - 1, 0)[:, None])
    return RealFirst(order, live, jnp.where(live, segments, last), n_real)


def _zero_padding(x, live):
    """Zeros the [B, T, ...] entries where `live [B, T]` is False (None passes through)."""
    if x is None:
        return None
    return jnp.where(live.reshape(live.shape + (1,) * (x.ndim - 2)), x, 0)


def last_conv_inputs(conv_state, inputs, segments, n_real):
    """The last W - 1 real conv inputs of each row, zeroed where they precede its last segment.

    conv_state [B, W - 1, C] (carried, counted as part of the first segment); inputs [B, T, C] with
    the n_real [B] real tokens first; segments [B, T] with padding filled with the last real id.
    A row without real tokens keeps its conv_state.
    """
    width = conv_state.shape[1]
    stream = jnp.concatenate([conv_state, inputs.astype(conv_state.dtype)], axis=1)
    if segments is None:
        segments = jnp.zeros(inputs.shape[:2], jnp.int32)
    stream_segments = jnp.concatenate([jnp.repeat(segments[:, :1], width, axis=1), segments], axis=1)
    index = n_real[:, None] + jnp.arange(width, dtype=n_real.dtype)[None, :]
    keep = take_rows(stream_segments, index) == segments[:, -1:]
    return take_rows(stream, index) * keep[..., None].astype(stream.dtype)


class GatedDeltaNet(_DeltaMixer):
    """Gated DeltaNet mixer with Qwen3-Next's parameters (`Qwen3NextGatedDeltaNet`).

    Parameters (HF name -> here): in_proj_qkvz.weight [O, D] -> in_proj_qkvz [D, O] (transposed;
    O groups [q K | k K | v r*V | z r*V] per key head, r = HV / H); in_proj_ba.weight -> in_proj_ba
    [D, 2 HV] (groups [b r | a r] per key head); conv1d.weight [C, 1, W] -> conv1d [C, W];
    dt_bias [HV]; A_log [HV]; norm.weight [V] -> norm; out_proj.weight [D, HV V] -> out_proj
    [HV V, D] (transposed).
    """

    def __init__(self, hidden_size, num_k_heads, num_v_heads, head_k_dim, head_v_dim, *, conv_kernel_size=4,
                 norm_eps=1e-6, impl="auto", chunk_size=64, dtype=jnp.float32, param_dtype=jnp.float32, rngs):
        super().__init__(hidden_size, num_k_heads, num_v_heads, head_k_dim, head_v_dim,
                         conv_kernel_size=conv_kernel_size, norm_eps=norm_eps, impl=impl,
                         chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkvz = 2 * self.key_dim + 2 * self.value_dim
        self.in_proj_qkvz = normal_param(rngs, (hidden_size, qkvz), ("embed", "heads"), param_dtype)
        self.in_proj_ba = normal_param(rngs, (hidden_size, 2 * num_v_heads), ("embed", "heads"), param_dtype)
        self.A_log, self.dt_bias = _decay_params(rngs, num_v_heads, num_v_heads, param_dtype, (0.01, 16.0))

    def project(self, x):
        b, t, _ = x.shape
        r = self.num_v_heads // self.num_k_heads
        hk, dk, dv = self.num_k_heads, self.head_k_dim, self.head_v_dim
        qkvz = linear(x, self.in_proj_qkvz.get_value()).reshape(b, t, hk, 2 * dk + 2 * r * dv)
        q, k, v, z = jnp.split(qkvz, [dk, 2 * dk, 2 * dk + r * dv], axis=-1)
        ba = linear(x, self.in_proj_ba.get_value()).reshape(b, t, hk, 2 * r)
        mixed = jnp.concatenate([q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1)], -1)
        extras = (z.reshape(b, t, self.num_v_heads, dv), ba[..., :r].reshape(b, t, -1),
                  ba[..., r:].reshape(b, t, -1))
        return mixed, extras

    def gates(self, x, extras):
        z, b_logit, a = extras
        g = log_decay(a, self.A_log.get_value(), self.dt_bias.get_value())
        return g, jax.nn.sigmoid(b_logit.astype(jnp.float32)), None, z


class KimiDeltaAttention(_DeltaMixer):
    """KDA mixer (fla `KimiDeltaAttention` structure): per-channel decay, per-head beta.

    Decay `g = -exp(A_log[h]) * softplus(f_b(f_a(x)) + dt_bias[h, c])` [B, T, HV, K]; beta =
    sigmoid(b_proj x) [B, T, HV]; output gate `g_b(g_a(x)) + g_b_bias`, sigmoid-gated RMSNorm.
    """

    gate_activation = "sigmoid"

    def __init__(self, hidden_size, num_heads, head_dim, *, num_v_heads=None, head_v_dim=None,
                 conv_kernel_size=4, norm_eps=1e-5, impl="auto", chunk_size=64, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs):
        num_v_heads = num_v_heads or num_heads
        head_v_dim = head_v_dim or head_dim
        super().__init__(hidden_size, num_heads, num_v_heads, head_dim, head_v_dim,
                         conv_kernel_size=conv_kernel_size, norm_eps=norm_eps, impl=impl,
                         chunk_size=chunk_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, p = hidden_size, param_dtype
        self.q_proj = normal_param(rngs, (d, self.key_dim), ("embed", "heads"), p)
        self.k_proj = normal_param(rngs, (d, self.key_dim), ("embed", "heads"), p)
        self.v_proj = normal_param(rngs, (d, self.value_dim), ("embed", "heads"), p)
        self.f_a_proj = normal_param(rngs, (d, head_v_dim), ("embed", None), p)
        self.f_b_proj = normal_param(rngs, (head_v_dim, num_v_heads * head_dim), (None, "heads"), p)
        self.A_log, self.dt_bias = _decay_params(rngs, num_v_heads, num_v_heads * head_dim, p, (1.0, 16.0))
        self.g_a_proj = normal_param(rngs, (d, head_v_dim), ("embed", None), p)
        self.g_b_proj = normal_param(rngs, (head_v_dim, self.value_dim), (None, "heads"), p)
        self.g_b_bias = constant_param(0.0, (self.value_dim,), ("heads",), p)
        self._init_strengths(rngs, d, p)

    def _init_strengths(self, rngs, d, p):
        self.b_proj = normal_param(rngs, (d, self.num_v_heads), ("embed", "heads"), p)

    def _strengths(self, x):
        """(beta, beta_v) fed to the delta rule."""
        return jax.nn.sigmoid(linear(x, self.b_proj.get_value(), out_dtype=jnp.float32)), None

    def project(self, x):
        parts = [linear(x, w.get_value()) for w in (self.q_proj, self.k_proj, self.v_proj)]
        return jnp.concatenate(parts, axis=-1), None

    def gates(self, x, extras):
        b, t, _ = x.shape
        hv, dk, dv = self.num_v_heads, self.head_k_dim, self.head_v_dim
        f = linear(linear(x, self.f_a_proj.get_value()), self.f_b_proj.get_value()).reshape(b, t, hv, dk)
        g = log_decay(f, self.A_log.get_value()[:, None], self.dt_bias.get_value().reshape(hv, dk))
        gate = linear(linear(x, self.g_a_proj.get_value()), self.g_b_proj.get_value())
        gate = (gate + weight_as(self.g_b_bias.get_value(), gate.dtype)).reshape(b, t, hv, dv)
        beta, beta_v = self._strengths(x)
        return g, beta, beta_v, gate


class FG2GatedDeltaNet(KimiDeltaAttention):
    """FG2-GDN (and FG2-GDN+ with `decoupled=True`) mixer — RECONSTRUCTED (arXiv 2604.19021).

    KDA with beta per channel: beta = sigmoid(b_proj x) [B, T, HV, K]; keys (after L2 norm) and
    values are scaled by sqrt(beta) (FG2-GDN, needs K == V), or values by sqrt(beta_v) with
    beta_v = sigmoid(bv_proj x) [B, T, HV, V] (FG2-GDN+), then KDA runs with beta = 1.
    """

    def __init__(self, hidden_size, num_heads, head_dim, *, decoupled=False, **kwargs):
        self.decoupled = decoupled
        super().__init__(hidden_size, num_heads, head_dim, **kwargs)
        if not decoupled and self.head_v_dim != self.head_k_dim:
            raise ValueError(
                f"FG2-GDN scales k and v by one beta and needs head_v_dim == head_dim; got "
                f"{self.head_v_dim} != {self.head_k_dim} (use decoupled=True for FG2-GDN+)"
            )

    def _init_strengths(self, rngs, d, p):
        self.b_proj = normal_param(rngs, (d, self.key_dim * self.num_v_heads // self.num_k_heads),
                                   ("embed", "heads"), p)
        if self.decoupled:
            self.bv_proj = normal_param(rngs, (d, self.value_dim), ("embed", "heads"), p)

    def _strengths(self, x):
        b, t, _ = x.shape
        hv = self.num_v_heads
        beta = jax.nn.sigmoid(linear(x, self.b_proj.get_value(), out_dtype=jnp.float32))
        beta = beta.reshape(b, t, hv, self.head_k_dim)
        if not self.decoupled:
            return beta, None
        beta_v = jax.nn.sigmoid(linear(x, self.bv_proj.get_value(), out_dtype=jnp.float32))
        return beta, beta_v.reshape(b, t, hv, self.head_v_dim)
