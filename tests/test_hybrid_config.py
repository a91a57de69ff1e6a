"""Hybrid configs: layer patterns, delta-rule fields and their errors, Qwen3-Next config.json conversion,
cache layout, partial RoPE and zero-centred RMSNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.models import Decoder, KVCache, init_cache, preset
from jaxrl_llm.models.config import hybrid_layer_types
from jaxrl_llm.models.hf_config import from_hf_config, to_hf_config
from jaxrl_llm.models.hybrid import DeltaCache
from jaxrl_llm.models.norm import RMSNorm
from jaxrl_llm.models.rope import apply_rope, inverse_frequencies, rope_tables


def _abstract(config):
    return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))


def test_hybrid_layer_types_put_attention_every_nth_layer():
    assert hybrid_layer_types(8) == ("gated_deltanet",) * 3 + ("attention",) + ("gated_deltanet",) * 3 + ("attention",)
    assert hybrid_layer_types(3, every=2, mixer="kda") == ("kda", "attention", "kda")
    assert hybrid_layer_types(2, every=1) == ("attention", "attention")
    with pytest.raises(ValueError, match="every must be a positive int; got 0"):
        hybrid_layer_types(4, every=0)


def test_hybrid_tiny_preset_builds_a_qwen3_next_shaped_model():
    config = preset("hybrid-tiny")
    assert config.layer_types == ("gated_deltanet",) * 3 + ("attention",)
    assert config.rotary_dim == 8 and config.architecture == "Qwen3NextForCausalLM"
    model = _abstract(config)
    assert model.layers[3].mixer.q_proj.get_value().shape == (64, 4 * 2 * 16)  # query and gate per head
    delta = model.layers[0].mixer.delta
    assert delta.in_proj_qkvz.get_value().shape == (64, 2 * 2 * 16 + 2 * 4 * 16)
    assert delta.conv1d.get_value().shape == (2 * 2 * 16 + 4 * 16, 4)


@pytest.mark.parametrize("field, value, message", [
    ("linear_num_value_heads", 3, r"linear_num_value_heads \(3\) must be a multiple of linear_num_key_heads \(2\)"),
    ("delta_impl", "fast", r"delta_impl must be one of .*'fast'"),
    ("linear_conv_kernel_dim", 0, "linear_conv_kernel_dim must be a positive int; got 0"),
    ("linear_key_head_dim", 2.5, "linear_key_head_dim must be a positive int; got 2.5"),
    ("partial_rotary_factor", 0.1, r"partial_rotary_factor must be in \(0, 1\].*rotary_dim 1"),
])
def test_bad_delta_fields_fail_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        preset("hybrid-tiny", **{field: value})


def test_delta_fields_default_to_the_attention_shapes():
    config = preset("tiny")
    assert (config.linear_num_key_heads, config.linear_num_value_heads) == (4, 4)
    assert (config.linear_key_head_dim, config.linear_value_head_dim) == (16, 16)


def test_fg2_gdn_needs_equal_key_and_value_dims():
    config = preset("hybrid-tiny", layer_types=hybrid_layer_types(4, mixer="fg2_gdn"), linear_value_head_dim=8)
    with pytest.raises(ValueError, match="linear_key_head_dim == linear_value_head_dim; got 16 != 8"):
        _abstract(config)
    _abstract(config.replace(layer_types=hybrid_layer_types(4, mixer="fg2_gdn_plus")))


def test_unknown_layer_type_lists_the_delta_rule_types():
    with pytest.raises(ValueError, match=r"unknown layer type 'mamba'.*'fg2_gdn_plus'.*'gated_deltanet'.*'kda'"):
        _abstract(preset("hybrid-tiny", layer_types=("mamba",) * 4))


def test_init_cache_holds_fixed_shape_delta_state_next_to_kv():
    config = preset("hybrid-tiny", layer_types=("gated_deltanet", "kda", "fg2_gdn_plus", "attention"),
                    linear_value_head_dim=8)
    cache = init_cache(config, batch_size=3, max_len=10, dtype="bfloat16")
    for layer in cache.layers[:3]:
        assert isinstance(layer, DeltaCache)
        assert layer.conv.shape == (3, 3, 2 * 2 * 16 + 4 * 8) and layer.conv.dtype == jnp.bfloat16
        assert layer.recurrent.shape == (3, 4, 16, 8) and layer.recurrent.dtype == jnp.float32
        assert layer.last_segment.shape == (3,)
    assert isinstance(cache.layers[3], KVCache) and cache.layers[3].k.shape == (3, 2, 10, 16)


def test_qwen3_next_config_json_round_trips():
    config = preset("hybrid-tiny", tie_word_embeddings=True)
    hf = to_hf_config(config)
    assert hf["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert hf["rope_parameters"]["partial_rotary_factor"] == 0.5 and hf["num_experts"] == 0
    assert from_hf_config(hf) == config.replace(delta_chunk_size=64)


def test_qwen3_next_config_json_defaults_follow_transformers():
    """A transformers 4.x style file: no layer_types (every 4th layer attends), top-level rotary factor."""
    hf = {"architectures": ["Qwen3NextForCausalLM"], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
          "num_hidden_layers": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6,
          "partial_rotary_factor": 0.25, "num_experts": 0}
    config = from_hf_config(hf)
    assert config.layer_types == hybrid_layer_types(8)
    assert (config.head_dim, config.rotary_dim, config.linear_num_value_heads, config.linear_value_head_dim) == (
        256, 64, 32, 128)
    assert config.norm_zero_centered and config.attention_output_gate and config.qk_norm


def test_qwen3_next_moe_and_foreign_layers_are_refused():
    hf = to_hf_config(preset("hybrid-tiny"))
    del hf["num_experts"], hf["mlp_only_layers"]  # transformers' default: 512 experts on every layer
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2, 3\] are sparse mixture-of-experts"):
        from_hf_config(hf)
    with pytest.raises(ValueError, match="Qwen3NextForCausalLM has only .* layers; got \\['kda'\\]"):
        to_hf_config(preset("hybrid-tiny", layer_types=hybrid_layer_types(4, mixer="kda")))
    with pytest.raises(ValueError, match="partial_rotary_factor=0.5 does not exist in Qwen3ForCausalLM"):
        to_hf_config(preset("tiny", partial_rotary_factor=0.5, architecture="Qwen3ForCausalLM", qk_norm=True,
                            attention_bias=False))


def test_partial_rope_rotates_only_the_leading_channels():
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 8))
    positions = jnp.array([[0, 5, 11]])
    cos, sin = rope_tables(positions, inverse_frequencies(4, 10000.0))
    out = apply_rope(x, cos, sin)
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
    np.testing.assert_allclose(out[..., :4], apply_rope(x[..., :4], cos, sin), rtol=0, atol=0)
    # Position 5, frequency pair 1 (inv freq 10000^-0.5 = 0.01): a plain 2-D rotation of channels (1, 3).
    angle = 5 * 0.01
    a, b = float(x[0, 1, 0, 1]), float(x[0, 1, 0, 3])
    np.testing.assert_allclose([out[0, 1, 0, 1], out[0, 1, 0, 3]],
                               [a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="R even and R <= Dh = 8"):
        apply_rope(x, *rope_tables(positions, inverse_frequencies(12, 10000.0)))


def test_zero_centred_rms_norm_multiplies_by_one_plus_weight():
    norm = RMSNorm(2, eps=0.0, param_dtype=jnp.float32, zero_centered=True)
    np.testing.assert_array_equal(norm.scale.get_value(), [0.0, 0.0])  # starts as the identity scale 1 + 0
    norm.scale.set_value(jnp.array([0.5, -0.25]))
    out = norm(jnp.array([[3.0, 4.0]]))  # rms = sqrt(12.5)
    np.testing.assert_allclose(out, [[3.0 / np.sqrt(12.5) * 1.5, 4.0 / np.sqrt(12.5) * 0.75]], rtol=1e-6)
