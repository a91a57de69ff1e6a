"""ModelConfig validation, presets, HF config conversion and the quantized-weight hook of `linear`."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.models.config import preset
from jaxrl_llm.models.hf_config import from_hf_config, to_hf_config
from jaxrl_llm.models.linear import linear


def test_presets_have_expected_shapes():
    tiny = preset("tiny")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_kv_heads) == (2, 64, 2)
    assert tiny.resolved_layer_types == ("attention", "attention")
    qwen = preset("qwen2.5-0.5b")
    assert (qwen.vocab_size, qwen.hidden_size, qwen.num_layers, qwen.num_heads, qwen.num_kv_heads) == (
        151936, 896, 24, 14, 2)
    assert qwen.tie_word_embeddings and qwen.attention_bias
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")


def test_config_is_frozen_and_hashable_with_rope_scaling():
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    a = preset("tiny", rope_scaling=scaling, architecture="LlamaForCausalLM", attention_bias=False)
    b = preset("tiny", rope_scaling=dict(scaling), architecture="LlamaForCausalLM", attention_bias=False)
    assert hash(a) == hash(b) and a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 3


@pytest.mark.parametrize("field,value,message", [
    ("num_kv_heads", 3, "num_heads \\(4\\) must be a multiple of num_kv_heads \\(3\\)"),
    ("head_dim", 15, "head_dim must be even"),
    ("dtype", "int8", "ModelConfig.dtype must be one of"),
    ("layer_types", ("attention",), "layer_types must have num_layers=2 entries; got 1"),
    ("rope_scaling", {"factor": 8.0}, "missing \\['low_freq_factor'"),
    ("vocab_size", 0, "vocab_size must be a positive int"),
])
def test_invalid_fields_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny", **{field: value})


def _hf(**extra):
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
            "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True, "max_position_embeddings": 128}
    base.update(extra)
    return base


def test_from_hf_config_reads_old_and_new_rope_layouts():
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    new = from_hf_config(_hf(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, **llama3}))
    old = from_hf_config(_hf(rope_theta=5e5, rope_scaling={"rope_type": "llama3", **llama3}))
    assert new == old
    assert new.rope_theta == 5e5 and new.rope_scaling == llama3 and new.head_dim == 8
    assert (new.num_layers, new.num_kv_heads, new.rms_norm_eps, new.tie_word_embeddings) == (3, 2, 1e-5, True)
    assert not new.attention_bias and not new.qk_norm


def test_hf_config_round_trip_per_architecture():
    for arch, model_type in [("Qwen2ForCausalLM", "qwen2"), ("Qwen3ForCausalLM", "qwen3"),
                             ("LlamaForCausalLM", "llama")]:
        config = from_hf_config(_hf(architectures=[arch], model_type=model_type, head_dim=16))
        assert config.attention_bias == (arch == "Qwen2ForCausalLM")
        assert config.qk_norm == (arch == "Qwen3ForCausalLM")
        assert config.head_dim == 16
        hf = to_hf_config(config)
        assert hf["architectures"] == [arch] and hf["model_type"] == model_type
        assert from_hf_config(hf) == config


def test_architecture_from_model_type_when_architectures_absent():
    hf = _hf(model_type="qwen3")
    del hf["architectures"]
    assert from_hf_config(hf).architecture == "Qwen3ForCausalLM"


def test_unsupported_architecture_is_named_with_the_supported_list():
    with pytest.raises(ValueError, match="unsupported architecture 'MistralForCausalLM'; supported: "
                                         "Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM"):
        from_hf_config(_hf(architectures=["MistralForCausalLM"]))
    with pytest.raises(ValueError, match="rope_type must be 'default' or 'llama3'; got 'yarn'"):
        from_hf_config(_hf(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}))
    with pytest.raises(ValueError, match="attention_bias=True"):
        from_hf_config(_hf(attention_bias=True))


class _Int8Weight:
    """A quantized leaf: int8 values times a per-column scale."""

    def __init__(self, w):
        self.scale = np.abs(w).max(axis=0) / 127
        self.q = np.round(w / self.scale).astype(np.int8)

    def dequantize(self, dtype):
        return (jnp.asarray(self.q, jnp.float32) * self.scale).astype(dtype)


def test_linear_accepts_plain_and_quantized_weights():
    x = jnp.asarray(np.random.RandomState(0).randn(2, 3, 8), jnp.float32)
    w = np.random.RandomState(1).randn(8, 5).astype(np.float32)
    np.testing.assert_allclose(linear(x, w), np.einsum("bti,io->bto", np.asarray(x), w), rtol=1e-5, atol=1e-5)
    quantized = _Int8Weight(w)
    expected = np.einsum("bti,io->bto", np.asarray(x), quantized.q * quantized.scale)
    np.testing.assert_allclose(linear(x, quantized), expected, rtol=1e-5, atol=1e-5)
    assert linear(x.astype(jnp.bfloat16), w, out_dtype=jnp.float32).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"w must be \[8, O\]"):
        linear(x, w.T)
