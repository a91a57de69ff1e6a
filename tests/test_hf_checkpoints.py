"""Hugging Face parity: tiny random Qwen2/Qwen3/Llama checkpoints built locally with `transformers`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jaxrl_llm.models import functional  # noqa: E402
from jaxrl_llm.models.config import tiny  # noqa: E402
from jaxrl_llm.models.decoder import Decoder  # noqa: E402
from jaxrl_llm.models.hf import load_pretrained, save_pretrained  # noqa: E402
from jaxrl_llm.models.safetensors_io import CheckpointReader  # noqa: E402
from jaxrl_llm.parallel import make_mesh, rules  # noqa: E402

forward = jax.jit(functional.forward, static_argnums=0)
TOKENS = np.random.RandomState(0).randint(0, 96, (2, 7))
POSITIONS = np.broadcast_to(np.arange(40, 47), (2, 7)).copy()  # past the llama3 original context
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
ARCHS = {
    "qwen2_untied": lambda: transformers.Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=False),
    "qwen3_tied": lambda: transformers.Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True),
    "llama3_scaled": lambda: transformers.LlamaConfig(
        **COMMON, head_dim=16, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
}
MODEL_CLASSES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama3": "LlamaForCausalLM"}


def _build_hf(name):
    torch.manual_seed(len(name))
    config = ARCHS[name]()
    model = getattr(transformers, MODEL_CLASSES[name.split("_")[0]])(config).eval()
    with torch.no_grad():  # larger-than-default weights, so a layout mistake shows up in the logits
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def _hf_logits(model, tokens=TOKENS, positions=POSITIONS):
    with torch.no_grad():
        return model(torch.tensor(tokens), position_ids=torch.tensor(positions)).logits.float().numpy()


def _our_logits(model, tokens=TOKENS, positions=POSITIONS):
    graphdef, params = nnx.split(model)
    logits, _ = forward(graphdef, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32))
    return np.asarray(logits)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model, checkpoint directory, HF logits)."""
    out = {}
    for name in ARCHS:
        model = _build_hf(name)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path, _hf_logits(model))
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_match_transformers_and_round_trip(name, checkpoints, tmp_path):
    hf_model, path, hf_logits = checkpoints[name]
    model, config = load_pretrained(path)
    assert config.num_kv_heads < config.num_heads
    assert config.tie_word_embeddings == (name == "qwen3_tied")
    ours = _our_logits(model)
    assert np.abs(ours - hf_logits).max() < 1e-4
    assert np.abs(hf_logits).max() > 1.0  # the weights are not near-zero
    save_pretrained(model, config, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded).__name__ == config.architecture
    assert np.abs(_hf_logits(reloaded) - ours).max() < 1e-4


def test_sharded_checkpoint_loads(checkpoints, tmp_path):
    hf_model, _, hf_logits = checkpoints["qwen2_untied"]
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, _ = load_pretrained(tmp_path)
    assert np.abs(_our_logits(model) - hf_logits).max() < 1e-4


def test_bfloat16_checkpoint_loads_exactly(checkpoints, tmp_path):
    hf_model = _build_hf("llama3_scaled").to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path)
    # An fp32 reference holding the bf16-rounded weights (`.float()` on the bf16 model would keep
    # its RoPE frequency buffer rounded to bf16 too).
    reference = _build_hf("llama3_scaled")
    reference.load_state_dict({k: v.float() for k, v in hf_model.state_dict().items()})
    reference_logits = _hf_logits(reference)
    model, config = load_pretrained(tmp_path)
    assert config.param_dtype == "float32"
    assert np.abs(_our_logits(model) - reference_logits).max() < 1e-4
    model16, config16 = load_pretrained(tmp_path, dtype="bfloat16")
    assert model16.embed.get_value().dtype == jnp.bfloat16 and config16.dtype == "bfloat16"
    ours16 = _our_logits(model16)
    assert np.abs(ours16 - reference_logits).max() < 0.05 * np.abs(ours16).max()
    save_pretrained(model16, config16, tmp_path / "bf16_out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16_out")
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(reloaded.model.embed_tokens.weight, hf_model.model.embed_tokens.weight)


def test_reader_matches_safe_open(checkpoints):
    from safetensors import safe_open

    path = checkpoints["qwen3_tied"][1]
    reader = CheckpointReader(path)
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == reader.names()
        for name in f.keys():
            np.testing.assert_array_equal(reader.array(name), f.get_tensor(name))


def test_load_onto_mesh_places_sharded_arrays(checkpoints):
    _, path, hf_logits = checkpoints["qwen2_untied"]
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    table = {"vocab": "tensor", "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "embed": "data"}

    def rules(axes, mesh):
        return NamedSharding(mesh, P(*(table.get(a) for a in axes)))

    model, _ = load_pretrained(path, mesh=mesh, sharding_rules=rules)
    q_proj = model.layers[0].mixer.q_proj.get_value()
    assert q_proj.sharding == NamedSharding(mesh, P("data", "tensor"))
    assert q_proj.addressable_shards[0].data.shape == (16, 8)
    assert model.lm_head.get_value().sharding.spec == P("data", "tensor")
    assert np.abs(_our_logits(model) - hf_logits).max() < 1e-4


def test_load_onto_mesh_with_project_sharding_rules(checkpoints):
    _, path, hf_logits = checkpoints["qwen3_tied"]
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model, _ = load_pretrained(path, mesh=mesh)
    for variable in (model.embed, model.layers[1].mixer.k_proj, model.layers[1].mlp.down_proj):
        value = variable.get_value()
        names = variable.get_metadata("out_sharding")
        assert value.sharding == rules.logical_to_sharding(names, mesh, shape=value.shape)
    assert not model.embed.get_value().sharding.is_fully_replicated
    assert np.abs(_our_logits(model) - hf_logits).max() < 1e-4


def test_a_parameter_the_mesh_does_not_divide_fails_naming_the_tensor(tmp_path):
    config = tiny(vocab_size=99, architecture="LlamaForCausalLM", attention_bias=False)
    save_pretrained(Decoder(config, rngs=nnx.Rngs(0)), config, tmp_path)
    with pytest.raises(ValueError, match=r"tensor 'model.embed_tokens.weight': dimension 0 \(logical 'vocab', "
                                         r"size 99\) is not divisible by mesh axes \('tensor',\) of size 2"):
        load_pretrained(tmp_path, mesh=make_mesh(1, 4, 2))
    # On a size-1 tensor axis the 99 rows divide: only the model width is split (over fsdp).
    model, _ = load_pretrained(tmp_path, mesh=make_mesh(1, 8, 1))
    assert model.embed.get_value().sharding.spec == P(None, "fsdp")


def _copy_checkpoint(src, dst):
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    return safetensors_torch.load_file(src / "model.safetensors")


def test_missing_tensor_is_named_with_expected_shape(checkpoints, tmp_path):
    tensors = _copy_checkpoint(checkpoints["qwen2_untied"][1], tmp_path)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.bias' \(expected shape \[16\]\)"):
        load_pretrained(tmp_path)


def test_wrong_shape_is_named_with_expected_shape(checkpoints, tmp_path):
    tensors = _copy_checkpoint(checkpoints["qwen2_untied"][1], tmp_path)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(40, 32)
    safetensors_torch.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.up_proj.weight' .* has shape \[40, 32\]; "
                                         r"expected \[48, 32\]"):
        load_pretrained(tmp_path)


def test_unsupported_architecture_is_named(checkpoints, tmp_path):
    _copy_checkpoint(checkpoints["qwen2_untied"][1], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture 'MistralForCausalLM'; supported: Qwen2"):
        load_pretrained(tmp_path)
