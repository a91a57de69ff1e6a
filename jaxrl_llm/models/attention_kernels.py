"""Softmax attention kernels behind one mask definition, and the rule that picks one per backend.

- `attend`: the reference. Builds the `[B, KVH, G, T, S]` float32 scores; exact, quadratic memory.
- `blockwise_attend`: online softmax (FlashAttention-2) in plain XLA. Query blocks in a `lax.map`,
  key blocks in a `lax.scan`, so at most one `[B, KVH, G, Bq, Bk]` tile of scores is live; its
  `custom_vjp` keeps only the output and the per-row log-sum-exp and recomputes the tiles in the
  backward, so forward and backward memory grow linearly in T. Tiles that the causal order hides
  from every query of a block are skipped (`lax.cond`).
- `cudnn_attend`: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU flash attention).
- `splash_attend`: the Pallas TPU splash kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  runnable on CPU through the Pallas interpreter.

Every kernel applies `attention_mask`: a query sees the keys of its own non-zero segment at slots
not after its own. Rows that see no key (padding queries) give a finite output that nothing
downstream reads: a uniform average of the values (reference, cuDNN), zeros (blockwise), or the
average over earlier padding keys (splash, whose segment 0 is an ordinary segment).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxrl_llm.parallel.rules import logical_to_spec

IMPLS = ("auto", "reference", "blockwise", "cudnn", "splash")
# "auto" runs the reference below this many query x key pairs (T * S) and the blockwise kernel from
# it on. Measured on CPU (B=1, H=4, Dh=64, forward+backward): T=256 ref 5.2 ms / blockwise 4.3 ms,
# T=512 21.9 / 9.8, T=2048 442 / 90; below 512 x 512 the two are one tile and a wash.
BLOCKWISE_MIN_SCORES = 512 * 512
# Largest head dim that cuDNN flash attention takes on every GPU generation (Hopper: 256).
CUDNN_MAX_HEAD_DIM = 128
# The splash kernel tiles by TPU lanes: its blocks are multiples of this.
SPLASH_LANES = 128
# Finite, so rows with no visible key (padding queries) give a uniform average instead of NaN.
_MASKED = -1e30


def attention_mask(q_segment_ids: jax.Array, q_slots: jax.Array, k_segment_ids: jax.Array,
                   k_slots: jax.Array) -> jax.Array:
    """`[B, T, S]` bool: same non-zero segment and key slot not after the query slot.

    q_segment_ids `[B, T]`, q_slots `[T]`, k_segment_ids `[B, S]`, k_slots `[S]`.
    """
    same_segment = q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    causal = k_slots[None, None, :] <= q_slots[None, :, None]
    return same_segment & causal & (k_segment_ids[:, None, :] != 0)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Reference softmax attention, softmax in float32.

    q `[B, T, H, Dh]`, k/v `[B, S, KVH, Dh]` (H a multiple of KVH), mask `[B, T, S]` -> `[B, T, H, Dh]`.
    """
    return attend_heads_major(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)


def attend_heads_major(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attend` with head-major keys and values (the KV-cache layout).

    q `[B, T, H, Dh]`, k/v `[B, KVH, S, Dh]`, mask `[B, T, S]` -> `[B, T, H, Dh]`.
    """
    b, t, h, dh = q.shape
    kvh = k.shape[1]
    q = q.reshape(b, t, kvh, h // kvh, dh)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = scores * (dh ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1)
    # The product keeps the batched-matmul layout; the transpose to `[B, T, KVH, G, Dh]` is its own
    # op (a dot writing the transposed layout misses XLA:CPU's fast path, which bf16 needs).
    out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(q.dtype), v.astype(q.dtype),
                     preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh).astype(q.dtype)


def resolve_attention_impl(impl: str, *, platform: str, dtype, head_dim: int, t: int, s: int,
                           cached: bool) -> str:
    """The kernel that `impl` (one of `IMPLS`) runs for T queries over S keys on `platform`.

    "auto": cuDNN on GPU for bf16/fp16 with `head_dim % 8 == 0`, `head_dim <= 128` and even T and S;
    splash on TPU without a cache; otherwise blockwise when `T * S >= BLOCKWISE_MIN_SCORES`, else the
    reference. "splash" needs no cache (its causal mask is static): calls with a cache (chunked
    prefill, decode) take the auto rule's XLA kernel. "cudnn" needs a GPU, "splash" a TPU or the CPU
    (Pallas interpreter; slow, for tests).
    """
    if impl not in IMPLS:
        raise ValueError(f"ModelConfig.attention_impl must be one of {IMPLS}; got {impl!r}")
    platform = "gpu" if platform in ("gpu", "cuda") else platform
    xla_choice = "blockwise" if t * s >= BLOCKWISE_MIN_SCORES else "reference"
    if impl in ("reference", "blockwise"):
        return impl
    if impl == "cudnn":
        if platform != "gpu":
            raise ValueError(f"ModelConfig.attention_impl='cudnn' needs a GPU backend; this computation "
                             f"targets {platform!r} (use 'auto', 'blockwise' or 'reference')")
        return impl
    if impl == "splash":
        if platform not in ("tpu", "cpu"):
            raise ValueError(f"ModelConfig.attention_impl='splash' needs a TPU backend (or the CPU's Pallas "
                             f"interpreter); this computation targets {platform!r}")
        return xla_choice if cached else impl
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 \
            and head_dim <= CUDNN_MAX_HEAD_DIM and t % 2 == 0 and s % 2 == 0:
        return "cudnn"
    if platform == "tpu" and not cached:
        return "splash"
    return xla_choice


# --- blockwise (online softmax) -------------------------------------------------------------------


def _pad_axis(x: jax.Array, size: int, axis: int, mode: str = "constant") -> jax.Array:
    """`x` padded at the end of `axis` to `size` (zeros, or the edge value with mode="edge")."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, mode=mode)


def _to_blocks(x: jax.Array, block: int, axis: int) -> jax.Array:
    """`[..., n * block, ...]` (at `axis`) -> `[n, ..., block, ...]`: the block index leads, for scans."""
    shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _from_blocks(x: jax.Array, axis: int) -> jax.Array:
    """Inverse of `_to_blocks`: `[n, ..., block, ...]` -> `[..., n * block, ...]`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _tile_scores(qi, kj, q_seg, q_slot, k_seg, k_slot, scale) -> jax.Array:
    """Scaled float32 scores of one tile, -inf where `attention_mask` hides the key.

    qi `[B, Bq, KVH, G, Dh]`, kj `[B, Bk, KVH, Dh]`, q_seg `[B, Bq]`, q_slot `[Bq]`, k_seg `[B, Bk]`,
    k_slot `[Bk]` -> `[B, KVH, G, Bq, Bk]`.
    """
    s = jnp.einsum("bqkgd,bckd->bkgqc", qi, kj, preferred_element_type=jnp.float32) * scale
    visible = attention_mask(q_seg, q_slot, k_seg, k_slot)
    return jnp.where(visible[:, None, None], s, -jnp.inf)


def _tile_visible(q_slot: jax.Array, k_slot: jax.Array) -> jax.Array:
    """`[]` bool: some key of the tile is not after some query (else causality hides the whole tile)."""
    return jnp.min(k_slot) <= jnp.max(q_slot)


def _blocked_inputs(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots):
    """Pads T and S to whole blocks and moves the block index first.

    Padded keys get segment 0 (hidden); padded slots repeat the edge one (no effect on tile skipping).
    Returns q `[nq, B, Bq, KVH, G, Dh]`, k/v `[nk, B, Bk, KVH, Dh]`, q_seg `[nq, B, Bq]`,
    q_slot `[nq, Bq]`, k_seg `[nk, B, Bk]`, k_slot `[nk, Bk]`.
    """
    b, t, h, dh = q.shape
    s, kvh = k.shape[1], k.shape[2]
    tp, sp = -(-t // block_q) * block_q, -(-s // block_k) * block_k
    q = _pad_axis(q, tp, 1).reshape(b, tp, kvh, h // kvh, dh)
    return (_to_blocks(q, block_q, 1), _to_blocks(_pad_axis(k, sp, 1), block_k, 1),
            _to_blocks(_pad_axis(v, sp, 1), block_k, 1),
            _to_blocks(_pad_axis(q_segment_ids, tp, 1), block_q, 1),
            _to_blocks(_pad_axis(q_slots, tp, 0, "edge"), block_q, 0),
            _to_blocks(_pad_axis(k_segment_ids, sp, 1), block_k, 1),
            _to_blocks(_pad_axis(k_slots, sp, 0, "edge"), block_k, 0))


def _blockwise_forward(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots):
    """(out `[B, T, H, Dh]` in q's dtype, lse `[nq, B, KVH, G, Bq]` float32, 0 on rows with no key)."""
    b, t, h, dh = q.shape
    scale = dh ** -0.5
    qb, kb, vb, qsb, qlb, ksb, klb = _blocked_inputs(block_q, block_k, q, k, v, q_segment_ids, q_slots,
                                                     k_segment_ids, k_slots)
    kvh, g = qb.shape[3], qb.shape[4]

    def query_block(xs):
        qi, q_seg, q_slot = xs
        rows = (b, kvh, g, block_q)

        def key_step(carry, ys):
            kj, vj, k_seg, k_slot = ys

            def update(carry):
                m, l, acc = carry
                s = _tile_scores(qi, kj, q_seg, q_slot, k_seg, k_slot, scale)
                m_new = jnp.maximum(m, s.max(-1))
                # A row with nothing visible yet keeps m = -inf; shift it by 0 so exp() gives 0, not NaN.
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                p = jnp.exp(s - m_safe[..., None])
                corr = jnp.exp(m - m_safe)
                pv = jnp.einsum("bkgqc,bckd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
                return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

            return lax.cond(_tile_visible(q_slot, k_slot), update, lambda c: c, carry), None

        init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32),
                jnp.zeros(rows + (dh,), jnp.float32))
        (m, l, acc), _ = lax.scan(key_step, init, (kb, vb, ksb, klb))
        seen = l > 0
        l_safe = jnp.where(seen, l, 1.0)
        out = jnp.where(seen[..., None], acc / l_safe[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(l_safe), 0.0)
        return jnp.moveaxis(out, 3, 1).astype(q.dtype), lse  # [B, Bq, KVH, G, Dh]

    out, lse = lax.map(query_block, (qb, qsb, qlb))
    return _from_blocks(out, 1)[:, :t].reshape(b, t, h, dh), lse


def _blockwise_backward(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots, out,
                        lse, dout):
    """FlashAttention-2 backward: tiles recomputed from lse; key blocks outside, query blocks inside.

    dk and dv of a key block accumulate over the query blocks; dq `[nq, B, Bq, KVH, G, Dh]` float32
    is carried across key blocks. Returns (dq, dk, dv) in the dtypes of q, k, v.
    """
    b, t, h, dh = q.shape
    s = k.shape[1]
    scale = dh ** -0.5
    qb, kb, vb, qsb, qlb, ksb, klb = _blocked_inputs(block_q, block_k, q, k, v, q_segment_ids, q_slots,
                                                     k_segment_ids, k_slots)
    nq = qb.shape[0]
    kvh, g = qb.shape[3], qb.shape[4]
    tp = nq * block_q
    dob = _to_blocks(_pad_axis(dout, tp, 1).reshape(b, tp, kvh, g, dh), block_q, 1)
    outb = _to_blocks(_pad_axis(out, tp, 1).reshape(b, tp, kvh, g, dh), block_q, 1)
    # delta_i = sum_d dO * O: the softmax Jacobian's row term.
    delta = jnp.moveaxis(jnp.sum(dob.astype(jnp.float32) * outb.astype(jnp.float32), -1), 2, -1)
    mm = q.dtype  # matmul input dtype (accumulation is float32)

    def key_block(dq, ys):
        kj, vj, k_seg, k_slot = ys

        def query_step(carry, xs):
            i, qi, doi, lse_i, delta_i, q_seg, q_slot = xs

            def update(carry):
                dk, dv, dq = carry
                s_ij = _tile_scores(qi, kj, q_seg, q_slot, k_seg, k_slot, scale)
                p = jnp.exp(s_ij - lse_i[..., None])  # [B, KVH, G, Bq, Bk]; 0 where hidden
                dv = dv + jnp.einsum("bkgqc,bqkgd->bckd", p.astype(mm), doi, preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqkgd,bckd->bkgqc", doi, vj, preferred_element_type=jnp.float32)
                ds = (p * (dp - delta_i[..., None]) * scale).astype(mm)
                dq_i = jnp.einsum("bkgqc,bckd->bqkgd", ds, kj, preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bkgqc,bqkgd->bckd", ds, qi, preferred_element_type=jnp.float32)
                return dk, dv, dq.at[i].add(dq_i)

            return lax.cond(_tile_visible(q_slot, k_slot), update, lambda c: c, carry), None

        zeros = jnp.zeros(kj.shape, jnp.float32)
        (dk, dv, dq), _ = lax.scan(query_step, (zeros, zeros, dq),
                                   (jnp.arange(nq), qb, dob, lse, delta, qsb, qlb))
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(key_block, jnp.zeros(qb.shape, jnp.float32), (kb, vb, ksb, klb))
    dq = _from_blocks(dq, 1)[:, :t].reshape(b, t, h, dh)
    return dq.astype(q.dtype), _from_blocks(dk, 1)[:, :s].astype(k.dtype), _from_blocks(dv, 1)[:, :s].astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _blockwise(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots):
    return _blockwise_forward(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots)[0]


def _blockwise_fwd(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots):
    out, lse = _blockwise_forward(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots)
    return out, (q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots, out, lse)


def _blockwise_bwd(block_q, block_k, res, dout):
    q, k, v, q_segment_ids, q_slots, k_segment_ids, k_slots, out, lse = res
    dq, dk, dv = _blockwise_backward(block_q, block_k, q, k, v, q_segment_ids, q_slots, k_segment_ids,
                                     k_slots, out, lse, dout)
    return dq, dk, dv, None, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attend(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array, q_slots: jax.Array,
                     k_segment_ids: jax.Array, k_slots: jax.Array, *, block_q: int = 512,
                     block_k: int = 512) -> jax.Array:
    """Attention over `attention_mask(q_segment_ids, q_slots, k_segment_ids, k_slots)` without the
    `[T, S]` scores: q `[B, T, H, Dh]`, k/v `[B, S, KVH, Dh]` -> `[B, T, H, Dh]` in q's dtype.

    Blocks of `block_q` queries and `block_k` keys (each capped at T, S; any T and S, padded
    internally). Equals `attend` to float32 rounding on every row that sees a key; rows that see
    none give 0.
    """
    t, s = q.shape[1], k.shape[1]
    block_q, block_k = min(int(block_q), t), min(int(block_k), s)
    return _blockwise(block_q, block_k, q, k.astype(q.dtype), v.astype(q.dtype), q_segment_ids.astype(jnp.int32),
                      q_slots.astype(jnp.int32), k_segment_ids.astype(jnp.int32), k_slots.astype(jnp.int32))


# --- cuDNN (GPU) ----------------------------------------------------------------------------------


def cudnn_attend(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array, q_slots: jax.Array,
                 k_segment_ids: jax.Array, k_slots: jax.Array) -> jax.Array:
    """cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`), same shapes as
    `blockwise_attend`; q must be bf16 or fp16.

    The scores stay inside the kernel; the segment / causal mask goes in as a `[B, 1, T, S]` bool
    (cuDNN turns it into a bias shared by the heads), since packed segments and slot offsets have no
    cheaper form in that API.
    """
    mask = attention_mask(q_segment_ids, q_slots, k_segment_ids, k_slots)[:, None]
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        implementation="cudnn")


# --- splash (TPU Pallas) --------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _splash_kernel(seq_len: int, heads_per_kv: int, block: int, interpret: bool):
    """A causal splash kernel for `heads_per_kv` query heads over one key/value head (MQA form)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len)) for _ in range(heads_per_kv)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    # The kernel holds its block-sparsity tables as arrays: make them concrete, not tracers of the
    # trace that first asked, so that the cached kernel serves every later trace.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash_local(q, k, v, segment_ids, *, block: int, interpret: bool) -> jax.Array:
    """Splash on local arrays: q `[B, T, H, Dh]`, k/v `[B, T, KVH, Dh]`, segment_ids `[B, T]`."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    b, t, h, dh = q.shape
    kvh = k.shape[2]
    block = min(-(-int(block) // SPLASH_LANES) * SPLASH_LANES, -(-t // SPLASH_LANES) * SPLASH_LANES)
    tp = -(-t // block) * block
    # The kernel does not scale the scores; padded tokens get segment 0, apart from every real one.
    q = _pad_axis(q * jnp.asarray(dh ** -0.5, q.dtype), tp, 1).reshape(b, tp, kvh, h // kvh, dh)
    q = q.transpose(0, 2, 3, 1, 4)  # [B, KVH, G, Tp, Dh]
    k, v = (_pad_axis(x.astype(q.dtype), tp, 1).transpose(0, 2, 1, 3) for x in (k, v))  # [B, KVH, Tp, Dh]
    seg = _pad_axis(segment_ids.astype(jnp.int32), tp, 1)
    kernel = _splash_kernel(tp, h // kvh, block, interpret)
    per_head = jax.vmap(lambda qh, kh, vh, sg: kernel(qh, kh, vh, SegmentIds(q=sg, kv=sg)),
                        in_axes=(0, 0, 0, None))
    out = jax.vmap(per_head)(q, k, v, seg)  # [B, KVH, G, Tp, Dh]
    return out.transpose(0, 3, 1, 2, 4)[:, :t].reshape(b, t, h, dh)


def splash_attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, block: int = 512,
                  interpret: bool | None = None, mesh=None) -> jax.Array:
    """Causal self-attention within segments through the Pallas splash kernel (no cache: S = T).

    q `[B, T, H, Dh]`, k/v `[B, T, KVH, Dh]`, segment_ids `[B, T]` -> `[B, T, H, Dh]`. Blocks are
    `block` rounded up to a multiple of 128; T is padded to whole blocks. `interpret` (default: on
    exactly when `mesh`'s devices, or the default backend, are CPUs) runs the Pallas interpreter. On
    a `mesh` the kernel runs per shard (`shard_map`) over the batch axes and, when KVH divides, the
    tensor axis of the heads; the Pallas call itself does not partition.
    """
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    interpret = platform == "cpu" if interpret is None else interpret
    local = functools.partial(_splash_local, block=block, interpret=interpret)
    if mesh is None or mesh.size == 1:
        return local(q, k, v, segment_ids)
    def axes(name, size):
        spec = logical_to_spec((name,), shape=(size,), mesh=mesh, allow_replicate=(name,))
        return spec[0] if len(spec) else None

    batch, heads = axes("batch", q.shape[0]), axes("kv_heads", k.shape[2])
    q_spec, kv_spec = P(batch, None, heads, None), P(batch, None, heads, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, P(batch, None)),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
