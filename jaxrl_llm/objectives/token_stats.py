"""Sampled-token log-probs and entropy from logits `[B, T, V]` or hidden states, chunked over V.

A 150k vocabulary makes `[B, T, V]` the largest activation of an RL step. These functions scan over
vocabulary chunks with an online logsumexp (running max, running sum of exp, running sum of
exp * logit), so only one fp32 `[B, T, C]` chunk is live at a time; the backward pass (custom VJP)
recomputes each chunk instead of storing softmax residuals. `hidden_token_stats` goes further and
never forms the logits at all: each chunk is `hidden @ lm_head[:, chunk]`.

When V is not a multiple of the chunk size the last chunk is shifted left to stay in bounds and its
columns already seen by the previous chunk are masked out (no padding copy of the logits).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxrl_llm.objectives.core import check_shape

Array = jax.Array


def _chunk_layout(vocab: int, chunk_size: int) -> tuple[int, int]:
    chunk = max(1, min(int(chunk_size), vocab))
    return chunk, -(-vocab // chunk)


def _chunk_start(k: Array, chunk: int, vocab: int) -> tuple[Array, Array]:
    """Start column of chunk k (clamped in bounds) and a [C] mask of columns new to this chunk."""
    start = jnp.minimum(k * chunk, vocab - chunk)
    cols = start + jnp.arange(chunk)
    return start, cols >= k * chunk


def _acc_dtype(*arrays: Array):
    """Accumulate in fp32 at least (bf16 logits are upcast chunk by chunk), in float64 when given float64."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _slice_upcast(logits: Array, start: Array, chunk: int, acc) -> Array:
    """One vocabulary chunk of `logits` (slice first, then upcast: only [..., C] is ever fp32)."""
    return jax.lax.dynamic_slice_in_dim(logits, start, chunk, axis=-1).astype(acc)


def _online_stats(chunk_logits_fn, targets: Array, lead_shape, vocab: int, chunk: int, n_chunks: int, acc):
    """Scan chunks; return (lse, target_logit, mean logit under softmax), each `acc` dtype `lead_shape`."""

    def body(carry, k):
        m, s, sx, tgt = carry
        start, fresh = _chunk_start(k, chunk, vocab)
        x = chunk_logits_fn(start)  # fp32 [..., C]
        x = jnp.where(fresh, x, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(x, axis=-1))
        scale = jnp.exp(m - m_new)
        e = jnp.exp(x - m_new[..., None])
        s = s * scale + jnp.sum(e, axis=-1)
        sx = sx * scale + jnp.sum(jnp.where(fresh, e * x, 0.0), axis=-1)
        local = targets - start
        hit = (local >= 0) & (local < chunk) & (targets >= k * chunk)
        picked = jnp.take_along_axis(x, jnp.clip(local, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        tgt = jnp.where(hit, picked, tgt)
        return (m_new, s, sx, tgt), None

    init = (jnp.full(lead_shape, -jnp.inf, acc), jnp.zeros(lead_shape, acc), jnp.zeros(lead_shape, acc),
            jnp.zeros(lead_shape, acc))
    (m, s, sx, tgt), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    lse = m + jnp.log(s)
    return lse, tgt, sx / s


def _dlogits(x: Array, fresh: Array, local: Array, hit: Array, lse: Array, entropy: Array,
             g_logp: Array, g_ent: Array) -> Array:
    """Cotangent of a logits chunk: d logp/dx = onehot - p; d H/dx = -p (log p + H)."""
    logp_all = x - lse[..., None]
    p = jnp.where(fresh, jnp.exp(logp_all), 0.0)
    onehot = (jnp.arange(x.shape[-1]) == local[..., None]) & hit[..., None]
    d = g_logp[..., None] * (onehot.astype(x.dtype) - p)
    d = d - g_ent[..., None] * p * (jnp.where(fresh, logp_all, 0.0) + entropy[..., None])
    return jnp.where(fresh, d, 0.0)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _logits_stats(logits: Array, targets: Array, chunk_size: int, temperature: float):
    out, _ = _logits_stats_fwd(logits, targets, chunk_size, temperature)
    return out


def _logits_stats_fwd(logits, targets, chunk_size, temperature):
    vocab = logits.shape[-1]
    chunk, n_chunks = _chunk_layout(vocab, chunk_size)
    acc = _acc_dtype(logits)

    def chunk_logits(start):
        return _slice_upcast(logits, start, chunk, acc) / temperature

    lse, tgt, mean_x = _online_stats(chunk_logits, targets, logits.shape[:-1], vocab, chunk, n_chunks, acc)
    logp, entropy = tgt - lse, lse - mean_x
    return (logp, entropy), (logits, targets, lse, entropy)


def _logits_stats_bwd(chunk_size, temperature, res, cotangents):
    logits, targets, lse, entropy = res
    g_logp, g_ent = cotangents
    vocab = logits.shape[-1]
    chunk, n_chunks = _chunk_layout(vocab, chunk_size)

    def body(grad, k):
        start, fresh = _chunk_start(k, chunk, vocab)
        x = _slice_upcast(logits, start, chunk, lse.dtype) / temperature
        local = targets - start
        hit = (local >= 0) & (local < chunk) & (targets >= k * chunk)
        d = _dlogits(x, fresh, local, hit, lse, entropy, g_logp, g_ent) / temperature
        prev = jax.lax.dynamic_slice_in_dim(grad, start, chunk, axis=-1)
        return jax.lax.dynamic_update_slice_in_dim(grad, prev + d.astype(grad.dtype), start, axis=-1), None

    grad, _ = jax.lax.scan(body, jnp.zeros_like(logits), jnp.arange(n_chunks))
    return grad, None


_logits_stats.defvjp(_logits_stats_fwd, _logits_stats_bwd)


def logits_token_stats(logits: Array, targets: Array, *, chunk_size: int = 8192,
                       temperature: float = 1.0) -> tuple[Array, Array]:
    """Log-prob of `targets` and entropy of softmax(logits / temperature), chunked over V.

    logits: [..., V] (any float dtype; each chunk is upcast to fp32); targets: [...] int.
    Returns `(logp [...], entropy [...])` in fp32 (float64 for float64 logits). Differentiable w.r.t. `logits`.
    """
    if logits.ndim < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must be logits.shape[:-1]={tuple(logits.shape[:-1])}; got {tuple(targets.shape)}")
    return _logits_stats(logits, jnp.asarray(targets, jnp.int32), int(chunk_size), float(temperature))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _hidden_stats(hidden: Array, lm_head: Array, targets: Array, chunk_size: int, temperature: float):
    out, _ = _hidden_stats_fwd(hidden, lm_head, targets, chunk_size, temperature)
    return out


def _head_chunk(hidden, lm_head, start, chunk, temperature):
    w = jax.lax.dynamic_slice_in_dim(lm_head, start, chunk, axis=1)
    x = jnp.einsum("...d,dc->...c", hidden, w, preferred_element_type=_acc_dtype(hidden, lm_head))
    return x / temperature, w


def _hidden_stats_fwd(hidden, lm_head, targets, chunk_size, temperature):
    vocab = lm_head.shape[1]
    chunk, n_chunks = _chunk_layout(vocab, chunk_size)

    def chunk_logits(start):
        return _head_chunk(hidden, lm_head, start, chunk, temperature)[0]

    lse, tgt, mean_x = _online_stats(chunk_logits, targets, hidden.shape[:-1], vocab, chunk, n_chunks,
                                     _acc_dtype(hidden, lm_head))
    logp, entropy = tgt - lse, lse - mean_x
    return (logp, entropy), (hidden, lm_head, targets, lse, entropy)


def _hidden_stats_bwd(chunk_size, temperature, res, cotangents):
    hidden, lm_head, targets, lse, entropy = res
    g_logp, g_ent = cotangents
    vocab = lm_head.shape[1]
    chunk, n_chunks = _chunk_layout(vocab, chunk_size)

    def body(carry, k):
        d_hidden, d_head = carry
        start, fresh = _chunk_start(k, chunk, vocab)
        x, w = _head_chunk(hidden, lm_head, start, chunk, temperature)
        local = targets - start
        hit = (local >= 0) & (local < chunk) & (targets >= k * chunk)
        d = _dlogits(x, fresh, local, hit, lse, entropy, g_logp, g_ent) / temperature
        d_hidden = d_hidden + jnp.einsum("...c,dc->...d", d, w.astype(acc))
        dw = jnp.einsum("...d,...c->dc", hidden.astype(acc), d)
        prev = jax.lax.dynamic_slice_in_dim(d_head, start, chunk, axis=1)
        d_head = jax.lax.dynamic_update_slice_in_dim(d_head, prev + dw, start, axis=1)
        return (d_hidden, d_head), None

    acc = lse.dtype
    init = (jnp.zeros(hidden.shape, acc), jnp.zeros(lm_head.shape, acc))
    (d_hidden, d_head), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    return d_hidden.astype(hidden.dtype), d_head.astype(lm_head.dtype), None


_hidden_stats.defvjp(_hidden_stats_fwd, _hidden_stats_bwd)


def hidden_token_stats(hidden: Array, lm_head: Array, targets: Array, *, chunk_size: int = 8192,
                       temperature: float = 1.0) -> tuple[Array, Array]:
    """Log-prob of `targets` and entropy from hidden states without forming the full logits.

    hidden: [B, T, D] (or any [..., D]); lm_head: [D, V]; targets: [B, T] int.
    Returns `(logp [B, T], entropy [B, T])` fp32; differentiable w.r.t. `hidden` and `lm_head`.
    """
    check_shape("lm_head", lm_head, (hidden.shape[-1], None), f"[D, V] with D={hidden.shape[-1]}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets must be hidden.shape[:-1]={tuple(hidden.shape[:-1])}; got {tuple(targets.shape)}")
    return _hidden_stats(hidden, lm_head, jnp.asarray(targets, jnp.int32), int(chunk_size), float(temperature))


def naive_token_stats(logits: Array, targets: Array, *, temperature: float = 1.0) -> tuple[Array, Array]:
    """Reference (unchunked) log-prob of `targets` and entropy; materialises log_softmax [..., V]."""
    logp_all = jax.nn.log_softmax(logits.astype(_acc_dtype(logits)) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def hidden_topk_logprobs(hidden: Array, lm_head: Array, k: int, *, chunk_size: int = 8192,
                         temperature: float = 1.0) -> tuple[Array, Array]:
    """The `k` most likely next tokens and their log-probs, scanning vocabulary chunks of `hidden @ lm_head`.

    hidden: [B, T, D] (or any [..., D]); lm_head: [D, V]. Returns `(idx [B, T, k] int32,
    logp [B, T, k] fp32)`, sorted by decreasing log-prob, under softmax(logits / temperature).
    Only one fp32 `[B, T, C]` chunk (plus the running `[B, T, k]` best) is live at a time: a
    teacher's top-k support for distribution-level distillation without a `[B, T, V]` array.
    Not differentiable (teacher side).
    """
    check_shape("lm_head", lm_head, (hidden.shape[-1], None), f"[D, V] with D={hidden.shape[-1]}")
    vocab = lm_head.shape[1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, V={vocab}]; got {k}")
    chunk, n_chunks = _chunk_layout(vocab, chunk_size)
    acc = _acc_dtype(hidden, lm_head)
    lead = hidden.shape[:-1]

    def body(carry, i):
        m, s, best, best_idx = carry
        start, fresh = _chunk_start(i, chunk, vocab)
        x = jnp.where(fresh, _head_chunk(hidden, lm_head, start, chunk, temperature)[0], -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(x, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(x - m_new[..., None]), axis=-1)
        cols = jnp.broadcast_to(start + jnp.arange(chunk, dtype=jnp.int32), x.shape)
        vals, pos = jax.lax.top_k(jnp.concatenate([best, x], axis=-1), k)
        idx = jnp.take_along_axis(jnp.concatenate([best_idx, cols], axis=-1), pos, axis=-1)
        return (m_new, s, vals, idx), None

    init = (jnp.full(lead, -jnp.inf, acc), jnp.zeros(lead, acc), jnp.full((*lead, k), -jnp.inf, acc),
            jnp.zeros((*lead, k), jnp.int32))
    (m, s, best, best_idx), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    lse = m + jnp.log(s)
    return jax.lax.stop_gradient(best_idx), jax.lax.stop_gradient((best - lse[..., None]).astype(jnp.float32))
