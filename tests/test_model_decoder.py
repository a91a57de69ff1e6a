"""Decoder forward, KV cache, packing, dtypes, logical axes and the functional view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from jaxrl_llm.models import Decoder, init_cache, preset
from jaxrl_llm.models import functional
from jaxrl_llm.models.attention import attention_mask
from jaxrl_llm.models.rope import apply_rope, inverse_frequencies, rope_tables

CFG = preset("tiny", qk_norm=True)
# One jitted forward shared by the tests (graphdef is static), so shapes compile once.
forward = jax.jit(functional.forward, static_argnums=0, static_argnames=("return_hidden", "return_logits"))


@pytest.fixture(scope="module")
def model():
    return Decoder(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def jitted(model):
    graphdef, params = nnx.split(model)
    return lambda tokens, positions, segment_ids=None: forward(
        graphdef, params, tokens, positions, segment_ids=segment_ids)[0]


def _tokens(shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size, dtype=jnp.int32)


def _arange(b, t, start=0):
    return jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (b, t))


def test_forward_shapes_and_hidden_path(model):
    tokens = _tokens((2, 5))
    logits, cache = model(tokens, _arange(2, 5))
    assert logits.shape == (2, 5, CFG.vocab_size) and logits.dtype == jnp.float32 and cache is None
    none_logits, _, hidden = model(tokens, _arange(2, 5), return_hidden=True, return_logits=False)
    assert none_logits is None and hidden.shape == (2, 5, CFG.hidden_size)
    np.testing.assert_allclose(hidden @ model.lm_head_weight(), logits, atol=1e-5)
    hidden2, _ = model.hidden(tokens, _arange(2, 5))
    np.testing.assert_array_equal(hidden, hidden2)


def test_tied_lm_head_is_embedding_transposed():
    tied = Decoder(preset("tiny", tie_word_embeddings=True), rngs=nnx.Rngs(1))
    assert not hasattr(tied, "lm_head")
    np.testing.assert_array_equal(tied.lm_head_weight(), tied.embed.get_value().T)


def test_parameters_carry_logical_axis_names(model):
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model))))
    axes = {path: tuple(var.get_value()) for path, var in specs.items()}
    expected = {
        ("embed",): ("vocab", "embed"), ("lm_head",): ("embed", "vocab"),
        ("final_norm", "scale"): (None,),
        ("layers", 0, "mixer", "q_proj"): ("embed", "heads"),
        ("layers", 0, "mixer", "k_proj"): ("embed", "kv_heads"),
        ("layers", 0, "mixer", "v_proj"): ("embed", "kv_heads"),
        ("layers", 0, "mixer", "o_proj"): ("heads", "embed"),
        ("layers", 0, "mixer", "q_bias"): ("heads",), ("layers", 0, "mixer", "k_bias"): ("kv_heads",),
        ("layers", 0, "mixer", "q_norm", "scale"): (None,),
        ("layers", 1, "mlp", "gate_proj"): ("embed", "mlp"), ("layers", 1, "mlp", "up_proj"): ("embed", "mlp"),
        ("layers", 1, "mlp", "down_proj"): ("mlp", "embed"),
        ("layers", 1, "input_norm", "scale"): (None,),
    }
    for path, names in expected.items():
        assert axes[path] == names, path
    assert all(len(a) == var.get_value().ndim for (p, a), var in
               zip(axes.items(), dict(nnx.to_flat_state(nnx.state(model))).values()))


def test_init_is_pure_and_jittable():
    eager = nnx.state(Decoder(CFG, rngs=nnx.Rngs(3)))
    jitted = jax.jit(lambda: nnx.state(Decoder(CFG, rngs=nnx.Rngs(3))))()
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, atol=1e-7)
    abstract = nnx.eval_shape(lambda: Decoder(CFG, rngs=nnx.Rngs(3)))
    assert abstract.embed.get_value().shape == (CFG.vocab_size, CFG.hidden_size)


def test_causal_future_tokens_do_not_change_past_logits(jitted):
    tokens = _tokens((1, 8))
    changed = tokens.at[0, 5:].set((tokens[0, 5:] + 1) % CFG.vocab_size)
    a, b = jitted(tokens, _arange(1, 8)), jitted(changed, _arange(1, 8))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3


def test_packed_segments_equal_separate_sequences(jitted):
    first, second = _tokens((1, 4), 1), _tokens((1, 3), 2)
    packed = jnp.concatenate([first, second, jnp.zeros((1, 1), jnp.int32)], axis=1)
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]], jnp.int32)
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]], jnp.int32)
    out = jitted(packed, positions, segments)
    alone_first = jitted(jnp.pad(first, ((0, 0), (0, 4))), _arange(1, 8))[:, :4]
    alone_second = jitted(jnp.pad(second, ((0, 0), (0, 5))), _arange(1, 8))[:, :3]
    np.testing.assert_allclose(out[:, :4], alone_first, atol=1e-5)
    np.testing.assert_allclose(out[:, 4:7], alone_second, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()


def _decode_all(graphdef, params, prompt, prompt_pos, prompt_seg, continuation, max_len):
    """Prefill `prompt [B, P]` (in two chunks), then teacher-force `continuation [B, N]` one token at a time in a
    `lax.while_loop`. Returns (prefill logits [B, P, V], decode logits [B, N, V])."""
    b, n = continuation.shape
    cache = init_cache(CFG, b, max_len)
    # Prefill in two chunks, so the second one attends to slots written by the first.
    split = prompt.shape[1] - 2
    chunks = []
    for part in (slice(0, split), slice(split, None)):
        logits, cache = functional.forward(graphdef, params, prompt[:, part], prompt_pos[:, part],
                                           segment_ids=prompt_seg[:, part], cache=cache)
        chunks.append(logits)
    prefill_logits = jnp.concatenate(chunks, axis=1)
    next_pos = jnp.max(prompt_pos, axis=1) + 1

    def body(carry):
        i, cache, out = carry
        token = jax.lax.dynamic_slice_in_dim(continuation, i, 1, axis=1)
        logits, cache = functional.forward(graphdef, params, token, (next_pos + i)[:, None],
                                           segment_ids=jnp.ones_like(token), cache=cache)
        return i + 1, cache, jax.lax.dynamic_update_slice_in_dim(out, logits, i, axis=1)

    out = jnp.zeros((b, n, CFG.vocab_size), jnp.float32)
    _, cache, out = jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), cache, out))
    return prefill_logits, out, cache


def test_kv_cache_ragged_left_padded_batch_matches_full_forward(model, jitted):
    graphdef, params = nnx.split(model)
    lengths, p, n = [5, 3, 1], 5, 3
    full = _tokens((3, p + n), 4)
    prompt = jnp.stack([jnp.pad(full[i, :lengths[i]], (p - lengths[i], 0)) for i in range(3)])
    seg = jnp.array([[0] * (p - l) + [1] * l for l in lengths], jnp.int32)
    pos = jnp.array([[0] * (p - l) + list(range(l)) for l in lengths], jnp.int32)
    continuation = jnp.stack([full[i, lengths[i]:lengths[i] + n] for i in range(3)])
    run = jax.jit(_decode_all, static_argnums=(0, 6))
    prefill, decoded, cache = run(graphdef, params, prompt, pos, seg, continuation, 12)
    assert int(cache.index) == p + n
    assert cache.layers[0].k.shape == (3, CFG.num_kv_heads, 12, CFG.head_dim)
    np.testing.assert_array_equal(cache.segment_ids, [[0] * (p - l) + [1] * (l + n) + [0] * 4 for l in lengths])
    reference = jitted(full, _arange(3, p + n))
    for i, length in enumerate(lengths):
        np.testing.assert_allclose(prefill[i, p - length:], reference[i, :length], atol=1e-5)
        np.testing.assert_allclose(decoded[i], reference[i, length:length + n], atol=1e-5)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_compute_is_close_to_fp32(model, param_dtype):
    tokens = _tokens((2, 6), 6)
    graphdef, params = nnx.split(model)
    reference, _ = forward(graphdef, params, tokens, _arange(2, 6))
    cfg16 = CFG.replace(dtype="bfloat16", param_dtype=param_dtype)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg16, rngs=nnx.Rngs(0))))
    params = jax.tree.map(lambda abstract, p: p.astype(abstract.dtype), params, nnx.state(model))
    logits, _, hidden = forward(graphdef, params, tokens, _arange(2, 6), return_hidden=True)
    assert hidden.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    scale = float(jnp.abs(reference).max())
    assert float(jnp.abs(logits - reference).max()) < 0.05 * scale
    assert float(jnp.abs(logits - reference).max()) > 0  # really ran in lower precision


def test_grad_through_functional_forward_matches_finite_difference(model):
    graphdef, params = nnx.split(model)
    tokens = _tokens((2, 5), 7)

    def loss(params):
        logits, _ = functional.forward(graphdef, params, tokens[:, :-1], _arange(2, 4))
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    @jax.jit
    def check(params, eps):
        value, grads = jax.value_and_grad(loss)(params)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        step = jax.tree.map(lambda g: eps * g / norm, grads)
        plus = loss(jax.tree.map(jnp.add, params, step))
        minus = loss(jax.tree.map(jnp.subtract, params, step))
        return value, norm, (plus - minus) / (2 * eps)

    value, norm, finite_difference = check(params, 1e-2)
    np.testing.assert_allclose(finite_difference, norm, rtol=2e-2)
    assert float(value) > 0


def test_rope_scores_depend_only_on_relative_position():
    inv = inverse_frequencies(16, 10000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 32})
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
    def score(m, n):
        cq, sq = rope_tables(jnp.array([[m]]), inv)
        ck, sk = rope_tables(jnp.array([[n]]), inv)
        return float(jnp.sum(apply_rope(q, cq, sq) * apply_rope(k, ck, sk)))
    assert score(3, 1) == pytest.approx(score(42, 40), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    cq, sq = rope_tables(jnp.array([[17]]), inv)
    assert float(jnp.linalg.norm(apply_rope(q, cq, sq))) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)


def test_bad_inputs_name_the_argument(model):
    tokens = _tokens((2, 4))
    with pytest.raises(ValueError, match=r"positions must be \[B, T\]"):
        model(tokens, _arange(2, 3))
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        model(tokens[0], _arange(2, 4)[0])
    with pytest.raises(ValueError, match=r"segment_ids must be \[B, T\]"):
        model(tokens, _arange(2, 4), segment_ids=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="cache batch size 3"):
        model(tokens, _arange(2, 4), cache=init_cache(CFG, 3, 8))
    with pytest.raises(ValueError, match="unknown layer type 'mamba'"):
        Decoder(CFG.replace(layer_types=("attention", "mamba")), rngs=nnx.Rngs(0))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=6, max_size=6), min_size=2, max_size=2),
       st.integers(0, 3))
def test_attention_mask_matches_definition(segments, offset):
    """Query t (slot offset + t) sees slot s iff same non-zero segment and s <= offset + t."""
    k_segments = np.zeros((2, 10), np.int32)
    k_segments[:, offset:offset + 6] = segments
    q_slots = offset + np.arange(6)
    mask = np.asarray(attention_mask(jnp.asarray(segments), jnp.asarray(q_slots), jnp.asarray(k_segments),
                                     jnp.arange(10)))
    for b in range(2):
        for t in range(6):
            for s in range(10):
                expected = segments[b][t] != 0 and k_segments[b, s] == segments[b][t] and s <= q_slots[t]
                assert mask[b, t, s] == expected, (b, t, s)
