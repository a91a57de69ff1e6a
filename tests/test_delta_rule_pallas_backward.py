"""The fused Pallas backward (`pallas_backward.py`, interpret mode) against float64 autodiff of the recurrence.

Every case uses a non-zero initial state, a cotangent on both outputs, and T = 21 over chunks of 8
(three chunks, the last one padded).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_delta_rule_kernels import VARIANTS, make_inputs, numpy_delta_rule

from jaxrl_llm.kernels.delta_rule import delta_rule
from jaxrl_llm.kernels.delta_rule.pallas import pallas_delta_rule
from jaxrl_llm.kernels.delta_rule.pallas_backward import chunk_entry_states, fused_backward
from jaxrl_llm.kernels.delta_rule.pallas_fused import fused_forward

C, T = 8, 21
NAMES = ("q", "k", "v", "g", "beta", "beta_v", "initial_state")


def _inputs(variant, **kw):
    return {n: jnp.asarray(a) for n, a in make_inputs(variant, t=kw.pop("t", T), **kw).items() if a is not None}


def _weighted(o, s):
    """A loss whose cotangents on o and the final state are dense and non-uniform."""
    o = o.astype(jnp.promote_types(o.dtype, jnp.float32))  # bf16 cannot count to o.size
    w = jnp.cos(jnp.arange(o.size, dtype=o.dtype)).reshape(o.shape)
    return jnp.sum(w * o) + jnp.sum(jnp.sin(s))


def _pallas_loss(args, reset, backward, block_v):
    kd = args["q"].shape[-1]
    o, s = pallas_delta_rule(*(args.get(n) for n in NAMES), kd**-0.5, reset, C, True, "auto", backward,
                             block_v)
    return _weighted(o, s)


@functools.lru_cache(maxsize=None)
def _pallas_grad(backward="auto", block_v=None):
    return jax.jit(jax.grad(lambda args, reset: _pallas_loss(args, reset, backward, block_v)))


def _float64_grads(args, segment_ids=None):
    """jax.grad of the float64 token-by-token recurrence (recurrent.py)."""
    with jax.enable_x64(True):
        args64 = {n: a.astype(jnp.float64) for n, a in args.items()}

        def loss(a):
            return _weighted(*delta_rule(**a, segment_ids=segment_ids, impl="recurrent",
                                         output_final_state=True))

        return {n: np.asarray(g) for n, g in jax.jit(jax.grad(loss))(args64).items()}


def _reset(segment_ids):
    return jnp.pad(segment_ids[:, 1:] != segment_ids[:, :-1], ((0, 0), (1, 0)))


def _assert_close(got, want, rtol=1e-5):
    assert set(got) == set(want)
    for name in want:
        g, w = np.asarray(got[name], np.float64), want[name]
        assert g.shape == w.shape and np.all(np.isfinite(g)), name
        rel = np.linalg.norm(g - w) / np.linalg.norm(w)
        assert rel < rtol, f"{name}: relative error {rel:.2e}"
        np.testing.assert_allclose(g, w, atol=10 * rtol * np.max(np.abs(w)), err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_of_every_input_match_float64_recurrence(variant):
    args = _inputs(variant, seed=4)
    got = _pallas_grad()(args, None)
    _assert_close(got, _float64_grads(args))


@pytest.mark.parametrize("variant, v, block_v", [("gdn", 32, 8), ("fg2", 16, 8), ("fg2plus", 8, 4)])
def test_grouped_heads_and_value_tiles_sum_their_partial_gradients(variant, v, block_v):
    # 4 value heads on 2 q/k heads, and V / BV value tiles per head: the key-side gradients are
    # partial sums over both (FG2-GDN's beta also collects its value-gate part).
    args = _inputs(variant, seed=6, hv=4, v=v)
    _assert_close(_pallas_grad("pallas", block_v)(args, None), _float64_grads(args))


@pytest.mark.parametrize("variant", ("gdn", "kda", "fg2plus"))
def test_packed_sequences_gradients_match_float64_recurrence(variant):
    args = _inputs(variant, seed=7)
    # Starts inside the first and second chunk, on the third chunk's first token, and a length-1
    # sequence; the second row is one sequence.
    ids = np.zeros((2, T), np.int32)
    ids[0, 5:], ids[0, 6:], ids[0, 13:], ids[0, 16:] = 1, 2, 3, 4
    seg = jnp.asarray(ids)
    got = _pallas_grad()(args, _reset(seg))
    _assert_close(got, _float64_grads(args, segment_ids=seg))


@pytest.mark.parametrize("variant", ("kda", "fg2plus"))
def test_long_decay_span_chunks_take_exact_scores_in_the_backward(variant):
    args = _inputs(variant, seed=3)
    rng = np.random.default_rng(3)
    # Chunk decay spans of ~50-250: beyond the one-reference-row limit except in the first chunk.
    g = -np.abs(rng.standard_normal(args["g"].shape) * 8.0)
    g[:, :C] *= 0.01
    args["g"] = jnp.asarray(g, jnp.float32)
    _assert_close(_pallas_grad()(args, None), _float64_grads(args))


def test_chunked_backward_switch_gives_the_same_gradients():
    args = _inputs("kda", seed=8)
    fused, chunked = _pallas_grad("pallas")(args, None), _pallas_grad("chunked")(args, None)
    for name in args:
        np.testing.assert_allclose(fused[name], chunked[name], atol=1e-5 * float(jnp.max(jnp.abs(chunked[name]))),
                                   err_msg=name)


def test_bad_backward_arguments_fail_naming_them():
    args = _inputs("gdn", seed=9)
    with pytest.raises(ValueError, match="backward must be one of"):
        _pallas_grad("triton")(args, None)
    with pytest.raises(ValueError, match="backward_block_v must be a positive divisor of V = 16"):
        _pallas_grad("pallas", 6)(args, None)


def test_chunk_entry_states_equal_the_recurrence_at_chunk_boundaries():
    raw = make_inputs("kda", seed=10)
    a = {n: jnp.asarray(x) for n, x in raw.items() if x is not None}
    states = chunk_entry_states(a["k"], a["v"], a["g"], a["beta"][..., None], None, a["initial_state"],
                                chunk=C, block_v=8, interpret=True)
    b, hv, kd, vd = a["initial_state"].shape
    states = np.asarray(states).reshape(b, hv, -1, kd, vd)
    assert states.shape[2] == -(-raw["q"].shape[1] // C)
    np.testing.assert_allclose(states[:, :, 0], raw["initial_state"], atol=1e-7)
    for n in range(1, states.shape[2]):
        prefix = {k: None if x is None else x[:, : n * C] for k, x in raw.items() if k != "initial_state"}
        _, want = numpy_delta_rule(**prefix, initial_state=raw["initial_state"])
        np.testing.assert_allclose(states[:, :, n], want, atol=2e-5, rtol=1e-4, err_msg=f"chunk {n}")


def test_bfloat16_inputs_give_gradients_within_one_percent():
    # bf16 inputs take bf16 matmul operands in both kernels (fp32 accumulation, solve and state).
    args = _inputs("kda", seed=11)
    b16 = {n: a if n == "initial_state" else a.astype(jnp.bfloat16) for n, a in args.items()}
    got = _pallas_grad()(b16, None)
    want = _float64_grads({n: a.astype(jnp.float32) for n, a in b16.items()})
    for name in args:
        assert got[name].dtype == b16[name].dtype, name
        g = np.asarray(got[name], np.float64)
        rel = np.linalg.norm(g - want[name]) / np.linalg.norm(want[name])
        assert 1e-5 < rel < 1e-2, f"{name}: relative error {rel:.2e}"


def test_auto_lowers_the_fused_backward_for_cuda_and_pallas_for_tpu():
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731

    def grad_of(backward):
        def loss(q, k, v, g, beta):
            o, s = pallas_delta_rule(q, k, v, g, beta, None, z(1, 2, 16, 16), 0.25, None, 16, False,
                                     "auto", backward)
            return jnp.sum(o) + jnp.sum(s)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).trace(
            z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2), z(1, 40, 2))

    auto = grad_of("auto")
    cuda = auto.lower(lowering_platforms=("cuda",)).as_text()
    tpu = grad_of("pallas").lower(lowering_platforms=("tpu",)).as_text()
    for text in (cuda, tpu):
        assert "delta_rule_fused_backward" in text and "delta_rule_chunk_states" in text
    assert "tpu_custom_call" in tpu
    # "auto" on TPU keeps the chunked VJP (the fused kernels there are opt-in: pallas.py).
    auto_tpu = auto.lower(lowering_platforms=("tpu",)).as_text()
    assert "delta_rule_fused_backward" not in auto_tpu
    chunked = grad_of("chunked").lower(lowering_platforms=("tpu",)).as_text()
    # (jax.grad alone: the forward's outputs are dead, so no forward kernel is left either.)
    assert "delta_rule_fused_backward" not in chunked and "delta_rule_chunk_states" not in chunked


def _kernel_inputs(args):
    """delta_rule arguments -> the fused kernels' g [B, T, HV, Kg] and beta [B, T, HV, 1 or K]."""
    b, t, hv, _ = args["v"].shape
    g, beta = args.get("g"), args.get("beta")
    g = jnp.zeros((b, t, hv, 1), jnp.float32) if g is None else (g if g.ndim == 4 else g[..., None])
    beta = None if beta is None else (beta if beta.ndim == 4 else beta[..., None])
    return args["q"], args["k"], args["v"], g, beta, args.get("beta_v"), args["initial_state"]


def _mosaic_block_grads(args, block_v):
    """Forward and gradients through the kernels with Mosaic's block placement, in the interpreter."""
    q, k, v, g, beta, beta_v, s0 = _kernel_inputs(args)
    scale = q.shape[-1] ** -0.5
    opts = dict(chunk=C, block_v=block_v, interpret=True, compiler_params=None, mosaic_blocks=True)
    o, s = fused_forward(q, k, v, g, beta, beta_v, scale, s0, **opts)
    d_o, d_s = jax.grad(_weighted, argnums=(0, 1))(o, s)
    grads = fused_backward(q, k, v, g, beta, beta_v, s0, scale, None, d_o, d_s, **opts)
    grads = dict(zip(NAMES, grads))
    for name in ("g", "beta"):  # back to the delta_rule shapes
        if name in args:
            grads[name] = grads[name].reshape(args[name].shape)
        else:
            grads.pop(name)
    if "beta_v" not in args:
        grads.pop("beta_v")
    return o, s, grads


# (K, V): 16 puts every array head-major ([B, H, Tp, D] copies); 128 reads q, k, v (and a
# per-channel g / beta) as column blocks of [B, Tp, H * D] and only the narrow gates head-major.
@pytest.mark.parametrize("variant, kd, hv", [("gdn", 16, 4), ("kda", 16, 2), ("fg2plus", 16, 4),
                                             ("gdn", 128, 4), ("kda", 128, 2)])
def test_mosaic_block_placement_matches_float64_recurrence(variant, kd, hv):
    args = _inputs(variant, seed=12, b=1, h=2, hv=hv, k=kd, v=kd)
    o, s, grads = _mosaic_block_grads(args, block_v=args["v"].shape[-1])
    with jax.enable_x64(True):
        want_o, want_s = delta_rule(**{n: a.astype(jnp.float64) for n, a in args.items()},
                                    impl="recurrent", output_final_state=True)
    np.testing.assert_allclose(o, want_o, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(s, want_s, atol=2e-5, rtol=1e-4)
    _assert_close(grads, _float64_grads(args))


def test_mosaic_blocks_lower_for_tpu_with_several_heads():
    # The (8, 128) block rule is checked while lowering: H = 4 heads of K = V = 128, a per-head
    # and a per-channel gate, GQA (4 value heads on 2 q/k heads).
    def lowered(fn, *shapes):
        structs = [jax.ShapeDtypeStruct(sh, jnp.bfloat16 if len(sh) == 4 and sh[-1] == 128 and i < 3
                                        else jnp.float32) for i, sh in enumerate(shapes)]
        return jax.jit(fn).trace(*structs).lower(lowering_platforms=("tpu",)).as_text()

    b, t, h, hv, d = 2, 256, 2, 4, 128
    opts = dict(chunk=64, block_v=d, interpret=False, operand_dtype=jnp.bfloat16, mosaic_blocks=True,
                compiler_params=None)
    for kg in (1, d):
        shapes = ((b, t, h, d), (b, t, h, d), (b, t, hv, d), (b, t, hv, kg), (b, t, hv, 1), (b, hv, d, d))
        fwd = lowered(lambda q, k, v, g, beta, s0: fused_forward(q, k, v, g, beta, None, 0.1, s0, **opts),
                      *shapes)
        bwd = lowered(lambda q, k, v, g, beta, s0, do, ds: fused_backward(
            q, k, v, g, beta, None, s0, 0.1, None, do, ds, **opts), *shapes, shapes[2], shapes[-1])
        assert "delta_rule_fused_forward" in fwd and "tpu_custom_call" in fwd
        assert "delta_rule_fused_backward" in bwd and "delta_rule_chunk_states" in bwd
