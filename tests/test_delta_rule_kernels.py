"""Delta-rule kernels: every impl and variant against a float64 NumPy per-token recurrence."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.kernels.delta_rule import delta_rule, delta_rule_step
from jaxrl_llm.kernels.delta_rule.api import resolve_impl

B, T, H, K, V, C = 2, 37, 2, 16, 16, 16
VARIANTS = ("deltanet", "gdn", "kda", "fg2", "fg2plus")
IMPLS = ("recurrent", "chunked", "pallas")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(variant, seed=0, b=B, t=T, h=H, hv=None, k=K, v=V):
    """Random float32 inputs (NumPy) for `variant`: dict of delta_rule arguments."""
    rng = np.random.default_rng(seed)
    hv = hv or h
    v = 8 if variant == "fg2plus" else v  # FG2-GDN+ allows V != K
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sig = lambda x: (1 / (1 + np.exp(-x))).astype(np.float32)  # noqa: E731
    args = dict(q=_unit(f(b, t, h, k)), k=_unit(f(b, t, h, k)), v=f(b, t, hv, v), g=None, beta=None)
    if variant in ("gdn",):
        args["g"] = np.log(sig(f(b, t, hv) + 2.0))
    if variant in ("kda", "fg2", "fg2plus"):
        args["g"] = np.log(sig(f(b, t, hv, k) + 2.0))
    if variant in ("deltanet", "gdn", "kda"):
        args["beta"] = sig(f(b, t, hv))
    if variant in ("fg2", "fg2plus"):
        args["beta"] = sig(f(b, t, hv, k))
    if variant == "fg2plus":
        args["beta_v"] = sig(f(b, t, hv, v))
    args["initial_state"] = 0.3 * f(b, hv, k, v)
    return args


def numpy_delta_rule(q, k, v, g=None, beta=None, beta_v=None, initial_state=None, scale=None,
                     reset=None):
    """float64 per-token recurrence written per variant (decay, then delta step on decayed state)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, kd = q.shape
    hv, vd = v.shape[2], v.shape[3]
    q, k = np.repeat(q, hv // h, axis=2), np.repeat(k, hv // h, axis=2)
    scale = kd**-0.5 if scale is None else scale
    s = np.zeros((b, hv, kd, vd)) if initial_state is None else np.array(initial_state, np.float64)
    out = np.zeros((b, t, hv, vd))
    for i in range(t):
        if reset is not None:
            s[reset[:, i]] = 0.0
        kt, vt = k[:, i], v[:, i]
        if g is not None:
            gi = np.asarray(g, np.float64)[:, i]
            s = s * np.exp(gi if gi.ndim == 3 else gi[..., None])[..., None]
        if beta is not None and np.ndim(beta) == 4:  # FG2-GDN(+): sqrt-scaled keys and values
            bk = np.asarray(beta, np.float64)[:, i]
            bv = bk if beta_v is None else np.asarray(beta_v, np.float64)[:, i]
            kt, vt = np.sqrt(bk) * kt, np.sqrt(bv) * vt
            strength = np.ones((b, hv, 1))
        else:
            strength = np.ones((b, hv, 1)) if beta is None else np.asarray(beta, np.float64)[:, i, :, None]
        pred = np.einsum("bhk,bhkv->bhv", kt, s)
        s = s + kt[..., None] * (strength * (vt - pred))[..., None, :]
        out[:, i] = np.einsum("bhk,bhkv->bhv", scale * q[:, i], s)
    return out, s


def _jnp(args):
    return {n: None if a is None else jnp.asarray(a) for n, a in args.items()}


@functools.lru_cache(maxsize=None)
def _jitted(impl, output_final_state=True, chunk_size=C):
    return jax.jit(functools.partial(
        delta_rule, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state))


# Pallas shares every chunk tensor with "chunked"; its own state pass sees decay only through
# per-key factors, so per-head (gdn) and per-channel decay with V != K (fg2plus) cover it.
@pytest.mark.parametrize("variant, impl", [(v, i) for i in IMPLS for v in VARIANTS
                                           if i != "pallas" or v in ("gdn", "fg2plus")])
def test_matches_float64_recurrence_with_initial_state(variant, impl):
    args = make_inputs(variant, seed=1)
    ref_o, ref_s = numpy_delta_rule(**args)
    o, s = _jitted(impl)(**_jnp(args))
    np.testing.assert_allclose(np.asarray(o), ref_o, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(s), ref_s, atol=2e-5, rtol=2e-5)


# Head grouping and the zero default state are set up before any impl runs; the kernels see
# only the new head count.
@pytest.mark.parametrize("impl", ("chunked", "pallas"))
def test_matches_float64_recurrence_without_initial_state_grouped_heads(impl):
    args = make_inputs("kda", seed=2, hv=2 * H)
    args["initial_state"] = None
    ref_o, ref_s = numpy_delta_rule(**args)
    o, s = _jitted(impl)(**_jnp(args))
    assert o.shape == (B, T, 2 * H, V) and s.shape == (B, 2 * H, K, V)
    np.testing.assert_allclose(np.asarray(o), ref_o, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(s), ref_s, atol=2e-5, rtol=2e-5)


def test_final_state_is_none_unless_requested():
    args = _jnp(make_inputs("gdn"))
    o, s = _jitted("recurrent", False)(**args)
    assert s is None and o.shape == (B, T, H, V)


def test_bfloat16_inputs_within_one_percent():
    # Pallas runs the chunked preparation too; per-channel decay is the harder case for bf16.
    impl = "pallas"
    args = make_inputs("kda", seed=3)
    bf16 = {n: None if a is None else jnp.asarray(a, jnp.bfloat16) for n, a in args.items()}
    rounded = {n: None if a is None else np.asarray(a.astype(jnp.float32)) for n, a in bf16.items()}
    ref_o, _ = numpy_delta_rule(**rounded)
    o, s = _jitted(impl)(**bf16)
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(o, np.float64) - ref_o) / np.linalg.norm(ref_o)
    assert rel < 1e-2


@functools.lru_cache(maxsize=None)
def _grad_fn(impl):
    return jax.jit(jax.grad(functools.partial(_loss, impl)))


def _loss(impl, args):
    # chunk 4 over T = 11: three chunks (one padded) with a small compiled graph.
    o, s = delta_rule(**args, impl=impl, chunk_size=4, output_final_state=True)
    w = jnp.cos(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape)
    return jnp.sum(w * o) + jnp.sum(jnp.sin(s))


# Per-head and per-channel g and beta; Pallas's backward is the chunked VJP behind a custom_vjp,
# so one variant that has every input (fg2plus) checks its wiring.
@pytest.mark.parametrize("variant, impl", [("gdn", "chunked"), ("fg2plus", "chunked"), ("fg2plus", "pallas")])
def test_gradients_of_every_input_match_recurrent_autodiff(variant, impl):
    args = {n: a for n, a in _jnp(make_inputs(variant, seed=4, t=11)).items() if a is not None}
    want, got = _grad_fn("recurrent")(args), _grad_fn(impl)(args)
    assert set(got) == set(args) and {"g", "beta", "initial_state"} <= set(got)
    for name in args:
        scale = float(jnp.max(jnp.abs(want[name])))
        assert scale > 0, name
        np.testing.assert_allclose(got[name], want[name], atol=2e-5 * scale + 1e-6, err_msg=name)


@pytest.mark.parametrize("variant", ("gdn", "fg2plus"))
def test_decode_steps_reproduce_full_sequence(variant):
    args = _jnp(make_inputs(variant, seed=5, t=9))
    full_o, full_s = _jitted("chunked", True, 4)(**args)
    step = jax.jit(delta_rule_step)
    state = args["initial_state"]
    for t in range(9):
        per_t = {n: args[n][:, t] for n in ("q", "k", "v", "g", "beta", "beta_v") if n in args
                 and args[n] is not None}
        o_t, state = step(**per_t, state=state)
        np.testing.assert_allclose(o_t, full_o[:, t], atol=1e-5, err_msg=f"token {t}")
    np.testing.assert_allclose(state, full_s, atol=1e-5)


def _separate_runs(args, lengths):
    """Reference for one packed row: each sequence run alone from a zero state (first: given)."""
    outs, start = [], 0
    for n, length in enumerate(lengths):
        piece = {a: None if x is None else x[:, start : start + length] for a, x in args.items()
                 if a != "initial_state"}
        o, s = numpy_delta_rule(**piece, initial_state=args["initial_state"] if n == 0 else None)
        outs.append(o)
        start += length
    return np.concatenate(outs, axis=1), s


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_sequences_equal_separate_runs(impl):
    lengths = (5, 1, 17, 14)  # starts inside chunks, on a chunk boundary, and a length-1 sequence
    args = make_inputs("kda", seed=6, b=1)
    ref_o, ref_s = _separate_runs(args, lengths)
    cu = jnp.asarray(np.cumsum((0,) + lengths), jnp.int32)
    seg = jnp.asarray(np.repeat(np.arange(len(lengths)), lengths)[None] + 3, jnp.int32)
    # cu_seqlens becomes the same reset mask as segment_ids before any impl runs: check it once.
    packings = (dict(cu_seqlens=cu), dict(segment_ids=seg)) if impl == "chunked" else (dict(segment_ids=seg),)
    for packing in packings:
        o, s = _jitted(impl)(**_jnp(args), **packing)
        np.testing.assert_allclose(np.asarray(o), ref_o, atol=2e-5, err_msg=str(packing.keys()))
        np.testing.assert_allclose(np.asarray(s), ref_s, atol=2e-5)


def test_chunk_size_does_not_change_results():
    args = _jnp(make_inputs("kda", seed=7))
    # chunk 2 (19 chunks) against the default C = 16 (compiled by the float64 tests, 3 chunks).
    outs = [_jitted("chunked", True, c)(**args) for c in (C, 2)]
    for o, s in outs[1:]:
        np.testing.assert_allclose(o, outs[0][0], atol=1e-5)
        np.testing.assert_allclose(s, outs[0][1], atol=1e-5)


def test_qk_l2norm_option_equals_prenormalised_inputs():
    args = _jnp(make_inputs("gdn", seed=8))
    raw = dict(args, q=args["q"] * 3.0, k=args["k"] * 0.5)
    want, _ = _jitted("recurrent")(**args)
    got, _ = jax.jit(functools.partial(delta_rule, impl="recurrent",
                                       use_qk_l2norm_in_kernel=True))(**raw)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pallas_lowers_to_triton_for_cuda_and_mosaic_for_tpu():
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    fn = jax.jit(lambda q, k, v, g, b: delta_rule(
        q, k, v, g, b, impl="pallas", chunk_size=16, interpret=False)[0])
    traced = fn.trace(z(1, 40, 2, 16), z(1, 40, 2, 16), z(1, 40, 2, 128), z(1, 40, 2, 16), z(1, 40, 2))
    cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
    tpu = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert "__gpu$xla.gpu.triton" in cuda and "tpu_custom_call" not in cuda
    assert "tpu_custom_call" in tpu and "__gpu$xla.gpu.triton" not in tpu


def test_auto_picks_chunked_on_cpu_and_pallas_on_accelerators():
    assert resolve_impl("auto", 128, 128, 64, backend="cpu") == "chunked"
    assert resolve_impl("auto", 128, 128, 64, backend="gpu") == "pallas"
    assert resolve_impl("auto", 128, 128, 64, backend="tpu") == "pallas"
    assert resolve_impl("auto", 96, 128, 64, backend="gpu") == "chunked"
    with pytest.raises(ValueError, match="powers of two"):
        resolve_impl("pallas", 96, 128, 64, backend="gpu")
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("flash", 128, 128, 64)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(beta=np.zeros((2, 37, 3, 5), np.float32)), r"beta must be \[B, T, H\] or \[B, T, H, K\]"),
        (dict(g=np.zeros((2, 37), np.float32)), r"g must be \[B, T, H\] or \[B, T, H, K\]"),
        (dict(v=np.zeros((2, 37, 3, 16), np.float32)), "multiple of q/k's head count"),
        (dict(k=np.zeros((2, 37, 2, 8), np.float32)), "k must have the shape of q"),
        (dict(q=np.zeros((2, 37, 16), np.float32)), r"q must be \[B, T, H, K\]"),
        (dict(initial_state=np.zeros((2, 2, 16, 8), np.float32)), r"initial_state must be \[B, H, K, V\]"),
        (dict(beta_v=np.zeros((2, 37, 2, 16), np.float32)), "beta_v .* needs a per-channel beta"),
        (dict(q=np.zeros((2, 37, 2, 16), np.int32)), "q must be a floating-point array"),
        (dict(segment_ids=np.zeros((2, 36), np.int32)), r"segment_ids must be \[B, T\]"),
        (dict(cu_seqlens=np.array([0, 37], np.int32)), "cu_seqlens needs packed inputs with B == 1"),
        (dict(chunk_size=0), "chunk_size must be a power of two"),
        (dict(chunk_size=24), "chunk_size must be a power of two"),
    ],
)
def test_bad_arguments_fail_naming_the_argument(change, message):
    args = dict(make_inputs("gdn"), **change)
    with pytest.raises((ValueError, TypeError), match=message):
        delta_rule(**{n: jnp.asarray(a) if isinstance(a, np.ndarray) else a for n, a in args.items()},
                   impl="chunked")


def test_channel_beta_without_beta_v_needs_equal_key_and_value_dims():
    args = _jnp(make_inputs("fg2"))
    args["v"] = args["v"][..., :8]
    args["initial_state"] = None
    with pytest.raises(ValueError, match="needs K == V"):
        delta_rule(**args, impl="chunked")
