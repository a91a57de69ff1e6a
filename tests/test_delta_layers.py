"""Delta-rule token mixers against float64 NumPy re-implementations, decode parity, packing, HF."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models.delta_layers import (
    FG2GatedDeltaNet,
    GatedDeltaNet,
    KimiDeltaAttention,
    causal_depthwise_conv,
)

D, T = 32, 21
GDN_DIMS = dict(hidden_size=D, num_k_heads=2, num_v_heads=4, head_k_dim=16, head_v_dim=8)


def build(kind, impl="recurrent"):
    # The layer math does not depend on the kernel (each impl is checked against float64 in
    # test_delta_rule_kernels.py); the cheap-to-compile scan keeps these tests fast, and
    # test_pallas_layer_equals_scan_layer plus the hybrid decoder tests run the chunked kernels.
    common = dict(impl=impl, chunk_size=8, rngs=nnx.Rngs(0))
    if kind == "gdn":
        return GatedDeltaNet(**GDN_DIMS, **common)
    if kind == "kda":
        return KimiDeltaAttention(D, 2, 16, num_v_heads=4, head_v_dim=8, **common)
    if kind == "fg2":
        return FG2GatedDeltaNet(D, 2, 16, **common)
    return FG2GatedDeltaNet(D, 2, 16, head_v_dim=8, decoupled=True, **common)


def _randomise(model, seed=1):
    """Non-trivial values for every parameter (norm weights and biases are not all ones/zeros)."""
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            name = path[-1]
            scale = {"A_log": 0.5, "dt_bias": 0.5, "conv1d": 0.5}.get(name, 0.3)
            noise = rng.standard_normal(var.get_value().shape) * scale
            base = 1.0 if name == "norm" else 0.0
            var.set_value(jnp.asarray(base + noise, var.get_value().dtype))
    return model


def _params(model):
    return {path[-1]: np.asarray(var.get_value(), np.float64) for path, var in nnx.iter_graph(model)
            if isinstance(var, nnx.Param)}


sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
silu = lambda x: x * sig(x)  # noqa: E731
softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
l2n = lambda x: x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)  # noqa: E731


def np_conv(x, w, state):
    width, t = w.shape[1], x.shape[1]
    padded = np.concatenate([state, x], axis=1)
    return sum(padded[:, i : i + t] * w[:, i] for i in range(width)), padded[:, t:]


def np_recurrence(q, k, v, g, beta, s):
    """float64 gated delta rule; g [B,T,H] or [B,T,H,K]; beta [B,T,H] (k, v pre-scaled for FG2)."""
    hv = v.shape[2]
    q, k = np.repeat(q, hv // q.shape[2], 2), np.repeat(k, hv // k.shape[2], 2)
    q = q / np.sqrt(q.shape[-1])
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        d = np.exp(g[:, t]) if g.ndim == 4 else np.exp(g[:, t])[..., None]
        s = s * d[..., None]
        err = beta[:, t, :, None] * (v[:, t] - np.einsum("bhk,bhkv->bhv", k[:, t], s))
        s = s + k[:, t, ..., None] * err[..., None, :]
        out[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], s)
    return out, s


def np_gated_norm(o, gate, w, eps, act):
    o = o / np.sqrt(np.mean(o * o, -1, keepdims=True) + eps) * w
    return o * (silu(gate) if act == "silu" else sig(gate))


def np_layer(kind, model, x, state):
    """float64 NumPy forward of `model` (same equations, written independently of the module)."""
    p, x = _params(model), np.asarray(x, np.float64)
    b, t, _ = x.shape
    hk, hv, dk, dv = model.num_k_heads, model.num_v_heads, model.head_k_dim, model.head_v_dim
    conv_state, s = (np.asarray(a, np.float64) for a in state)
    if kind == "gdn":
        r = hv // hk
        qkvz = (x @ p["in_proj_qkvz"]).reshape(b, t, hk, -1)
        q, k = qkvz[..., :dk], qkvz[..., dk : 2 * dk]
        v, z = qkvz[..., 2 * dk : 2 * dk + r * dv], qkvz[..., 2 * dk + r * dv :]
        ba = (x @ p["in_proj_ba"]).reshape(b, t, hk, 2 * r)
        beta, a = sig(ba[..., :r].reshape(b, t, hv)), ba[..., r:].reshape(b, t, hv)
        g = -np.exp(p["A_log"]) * softplus(a + p["dt_bias"])
        gate, act = z.reshape(b, t, hv, dv), "silu"
    else:
        q, k, v = x @ p["q_proj"], x @ p["k_proj"], x @ p["v_proj"]
        f = (x @ p["f_a_proj"] @ p["f_b_proj"]).reshape(b, t, hv, dk)
        g = -np.exp(p["A_log"])[:, None] * softplus(f + p["dt_bias"].reshape(hv, dk))
        gate = (x @ p["g_a_proj"] @ p["g_b_proj"] + p["g_b_bias"]).reshape(b, t, hv, dv)
        act = "sigmoid"
        beta = sig(x @ p["b_proj"])
        if kind != "kda":
            beta = beta.reshape(b, t, hv, dk)
    mixed = np.concatenate([a.reshape(b, t, -1) for a in (q, k, v)], -1)
    mixed, conv_state = np_conv(mixed, p["conv1d"], conv_state)
    mixed = silu(mixed)
    q = l2n(mixed[..., : hk * dk].reshape(b, t, hk, dk))
    k = l2n(mixed[..., hk * dk : 2 * hk * dk].reshape(b, t, hk, dk))
    v = mixed[..., 2 * hk * dk :].reshape(b, t, hv, dv)
    if kind in ("fg2", "fg2plus"):
        bv = beta if kind == "fg2" else sig(x @ p["bv_proj"]).reshape(b, t, hv, dv)
        k, v = np.sqrt(beta) * np.repeat(k, hv // hk, 2), np.sqrt(bv) * v
        q, beta = np.repeat(q, hv // hk, 2), np.ones((b, t, hv))
    o, s = np_recurrence(q, k, v, g, beta, s)
    o = np_gated_norm(o, gate, p["norm"], model.norm_eps, act)
    return o.reshape(b, t, -1) @ p["out_proj"], (conv_state, s)


KINDS = ("gdn", "kda", "fg2", "fg2plus")


@functools.lru_cache(maxsize=None)
def _model_and_fn(kind):
    model = _randomise(build(kind))
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, x, segment_ids=None, state=None, padding_mask=None):
        return nnx.merge(graphdef, params)(x, segment_ids=segment_ids, state=state, padding_mask=padding_mask)

    return model, params, forward


def _inputs(seed, b=2, t=T):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, t, D)), jnp.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_float64_numpy_with_carried_state(kind):
    model, params, forward = _model_and_fn(kind)
    x = _inputs(2)
    rng = np.random.default_rng(3)
    state = tuple(jnp.asarray(0.3 * rng.standard_normal(a.shape), jnp.float32)
                  for a in model.init_state(2))
    y, (conv_state, rec_state) = forward(params, x, state=state)
    ref_y, (ref_conv, ref_rec) = np_layer(kind, model, x, state)
    assert y.shape == (2, T, D)
    scale = np.abs(ref_y).max()
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=2e-5 * scale)
    np.testing.assert_allclose(np.asarray(conv_state), ref_conv, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rec_state), ref_rec, atol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_one_token_at_a_time_equals_full_sequence(kind):
    model, params, forward = _model_and_fn(kind)
    x = _inputs(4)
    zero = model.init_state(2)  # an explicit state: the full call reuses the carried-state compile
    full_y, (full_conv, full_rec) = forward(params, x, state=zero)
    prompt = 4 if kind == "gdn" else 0  # prefill then decode; the others decode from scratch
    ys, state = [], zero
    if prompt:
        prompt_y, state = forward(params, x[:, :prompt], state=state)
        ys.append(prompt_y)
    for t in range(prompt, T):
        y_t, state = forward(params, x[:, t : t + 1], state=state)
        ys.append(y_t)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), full_y, atol=1e-5)
    np.testing.assert_allclose(state[0], full_conv, atol=1e-6)
    np.testing.assert_allclose(state[1], full_rec, atol=1e-5)


def test_packed_sequences_equal_separate_runs():
    _, params, forward = _model_and_fn("fg2plus")
    lengths = (2, 2, 2)  # shorter than the conv window: the last conv state must not hold earlier inputs
    x = _inputs(5, b=1, t=sum(lengths))
    seg = jnp.asarray(np.repeat(np.arange(3), lengths)[None], jnp.int32)
    y, (conv, rec) = forward(params, x, segment_ids=seg)
    starts = np.cumsum((0,) + lengths)
    for i, (a, z) in enumerate(zip(starts[:-1], starts[1:])):
        alone, (alone_conv, alone_rec) = forward(params, x[:, a:z])
        np.testing.assert_allclose(y[:, a:z], alone, atol=1e-5, err_msg=f"sequence {i}")
    np.testing.assert_allclose(rec, alone_rec, atol=1e-5)
    np.testing.assert_allclose(conv, alone_conv, atol=1e-6)


def test_padding_tokens_anywhere_leave_outputs_and_state_untouched():
    """Garbage padding before, between and after the real tokens of each row: outputs at the real
    tokens and the final conv and recurrent state equal the run without padding."""
    _, params, forward = _model_and_fn("kda")
    real = _inputs(2)  # [2, T, D]
    state = tuple(0.5 * jax.random.normal(jax.random.key(i), a.shape) for i, a in
                  enumerate(_model_and_fn("kda")[0].init_state(2)))
    want, (want_conv, want_rec) = forward(params, real, state=state)
    width = T + 4
    masks = np.ones((2, width), bool)
    masks[0, [0, 1, 9, 10]] = False  # left and split padding
    masks[1, [5, 6, width - 2, width - 1]] = False  # split and right padding
    x = np.array(_inputs(8, t=width))
    x[masks] = np.asarray(real).reshape(-1, D)
    y, (conv, rec) = forward(params, jnp.asarray(x), state=state, padding_mask=jnp.asarray(masks))
    for row in range(2):
        np.testing.assert_allclose(np.asarray(y)[row][masks[row]], want[row], atol=1e-5, err_msg=f"row {row}")
    np.testing.assert_allclose(conv, want_conv, atol=1e-6)
    np.testing.assert_allclose(rec, want_rec, atol=1e-5)


def test_pallas_layer_equals_scan_layer():
    model = _randomise(build("kda", impl="pallas"))
    x = _inputs(6)
    want, _ = _model_and_fn("kda")[2](_model_and_fn("kda")[1], x)
    got, _ = jax.jit(lambda m, x: m(x))(model, x)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_conv_taps_stop_at_sequence_boundaries():
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)
    w = jnp.ones((1, 3))
    seg = jnp.asarray([[0, 0, 0, 1, 1, 2]])
    y, state = causal_depthwise_conv(x, w, jnp.full((1, 2, 1), 10.0), seg)
    # Row starts from the carried state (10, 10); later sequences start from zeros.
    np.testing.assert_allclose(y[0, :, 0], [21, 13, 6, 4, 9, 6])
    np.testing.assert_allclose(state[0, :, 0], [0, 6])


def test_parameters_carry_logical_axis_names():
    model = build("gdn")
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    names = {path[-1]: tuple(leaf.get_value()) for path, leaf in nnx.to_flat_state(specs)}
    assert names["in_proj_qkvz"] == ("embed", "heads")
    assert names["out_proj"] == ("heads", "embed")
    assert names["conv1d"] == (None, "conv")
    assert names["norm"] == ("head_dim",)
    assert names["A_log"] == ("heads",) and names["dt_bias"] == ("heads",)


def test_bad_layer_inputs_fail_naming_the_argument():
    model, params, _ = _model_and_fn("gdn")
    with pytest.raises(ValueError, match=r"x must be \[B, T, 32\]"):
        model(jnp.zeros((2, 3, 31)))
    with pytest.raises(ValueError, match="state must be"):
        model(jnp.zeros((2, 3, D)), state=model.init_state(3))
    with pytest.raises(ValueError, match=r"segment_ids must be \[B, T\]"):
        model(jnp.zeros((2, 3, D)), segment_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"padding_mask must be \[B, T\] = \(2, 3\); got \(3, 2\)"):
        model(jnp.zeros((2, 3, D)), padding_mask=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="needs head_v_dim == head_dim"):
        FG2GatedDeltaNet(D, 2, 16, head_v_dim=8, rngs=nnx.Rngs(0))


def test_gated_deltanet_matches_hugging_face_qwen3_next():
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig

    config = Qwen3NextConfig(
        hidden_size=D, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=8, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, num_hidden_layers=1,
        layer_types=["linear_attention"], num_attention_heads=2, num_key_value_heads=1,
    )
    hf = modeling.Qwen3NextGatedDeltaNet(config, 0).double()
    model, params, forward = _model_and_fn("gdn")
    p = {name: torch.from_numpy(a) for name, a in _params(model).items()}
    with torch.no_grad():
        hf.in_proj_qkvz.weight.copy_(p["in_proj_qkvz"].T)
        hf.in_proj_ba.weight.copy_(p["in_proj_ba"].T)
        hf.conv1d.weight.copy_(p["conv1d"][:, None, :])
        hf.dt_bias.copy_(p["dt_bias"])
        hf.A_log.copy_(p["A_log"])
        hf.norm.weight.copy_(p["norm"])
        hf.out_proj.weight.copy_(p["out_proj"].T)
        x = _inputs(7)
        want = hf(torch.from_numpy(np.asarray(x, np.float64))).numpy()
    got, _ = forward(params, x)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5 * np.abs(want).max())
