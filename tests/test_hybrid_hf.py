"""Hugging Face Qwen3-Next parity: a tiny random dense `Qwen3NextForCausalLM` built with `transformers`
(its pure-torch Gated DeltaNet path; fla is not installed), loaded with `load_pretrained`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jaxrl_llm.models import functional  # noqa: E402
from jaxrl_llm.models.hf import hf_tensor_names, load_pretrained, save_pretrained  # noqa: E402

forward = jax.jit(functional.forward, static_argnums=0)
B, T = 2, 11
TOKENS = np.random.RandomState(0).randint(0, 96, (B, T))
LENGTHS = np.array([T, 6])  # row 1 is left-padded: 5 padding columns
MASK = (np.arange(T)[None, :] >= (T - LENGTHS)[:, None]).astype(np.int64)
POSITIONS = np.maximum(np.cumsum(MASK, axis=1) - 1, 0)


def _build_hf():
    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=0,
        rms_norm_eps=1e-5, layer_types=["linear_attention"] * 3 + ["full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    model = transformers.Qwen3NextForCausalLM(config).eval()
    with torch.no_grad():  # away from the (all-zero / all-one) init, so every mapping shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("norm.weight"):  # zero-centred: applied as 1 + w
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(0.2, 3.0)))
            elif name.endswith("dt_bias"):
                p.normal_(0, 0.5)
            elif name.endswith("conv1d.weight"):
                p.normal_(0, 0.4)
            else:
                p.normal_(0, 0.12)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf_model = _build_hf()
    path = tmp_path_factory.mktemp("qwen3_next")
    hf_model.save_pretrained(path)
    with torch.no_grad():
        logits = hf_model(torch.tensor(TOKENS), attention_mask=torch.tensor(MASK),
                          position_ids=torch.tensor(POSITIONS)).logits.float().numpy()
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    return path, logits, state


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_pretrained(checkpoint[0])


def test_config_reads_qwen3_next_fields(checkpoint, loaded):
    _, config = loaded
    assert config.architecture == "Qwen3NextForCausalLM"
    assert config.layer_types == ("gated_deltanet",) * 3 + ("attention",)
    assert (config.linear_num_key_heads, config.linear_num_value_heads) == (2, 4)
    assert (config.linear_key_head_dim, config.linear_value_head_dim, config.linear_conv_kernel_dim) == (16, 8, 4)
    assert config.rotary_dim == 4 and config.qk_norm and config.attention_output_gate and config.norm_zero_centered


def test_logits_match_transformers_with_left_padding(checkpoint, loaded):
    _, hf_logits, _ = checkpoint
    model, _ = loaded
    graphdef, params = nnx.split(model)
    logits, _ = forward(graphdef, params, jnp.asarray(TOKENS, jnp.int32), jnp.asarray(POSITIONS, jnp.int32),
                        segment_ids=jnp.asarray(MASK, jnp.int32))
    real = MASK.astype(bool)
    assert np.abs(hf_logits).max() > 1.0  # the comparison is not between near-zero numbers
    np.testing.assert_array_less(np.abs(np.asarray(logits)[real] - hf_logits[real]).max(), 1e-4)


def test_save_pretrained_round_trips_through_transformers(checkpoint, loaded, tmp_path):
    _, _, hf_state = checkpoint
    model, config = loaded
    save_pretrained(model, config, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["num_experts"] == 0 and written["layer_types"][3] == "full_attention"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(reloaded).__name__ == "Qwen3NextForCausalLM"
    state = reloaded.state_dict()
    assert set(hf_tensor_names(config)) == set(hf_state) == set(state)
    for name, tensor in hf_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)


def test_moe_checkpoint_fails_naming_the_sparse_layers(checkpoint, tmp_path):
    hf_config = json.loads((checkpoint[0] / "config.json").read_text())
    hf_config.update(num_experts=8, mlp_only_layers=[0, 1])
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match=r"layers \[2, 3\] are sparse mixture-of-experts"):
        load_pretrained(tmp_path)
