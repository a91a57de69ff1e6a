"""Greedy decoding parity with `transformers` `generate` on a tiny random Qwen2 checkpoint."""

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_llm.models.hf import load_pretrained  # noqa: E402
from jaxrl_llm.rollout import DecodeEngine, SamplingConfig, generate  # noqa: E402

PROMPTS = [[11, 12, 13, 14, 15, 16, 17], [40, 41], [90, 3, 7, 60]]
N_NEW = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      rope_theta=1e4, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # larger-than-default weights: peaked distributions, no argmax near-ties
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("qwen2_tiny")
    model.save_pretrained(path)
    return model, path


def _hf_greedy(model, prompt):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_text_equals_transformers_generate(checkpoint):
    hf_model, path = checkpoint
    model, config = load_pretrained(path)
    graphdef, params = nnx.split(model)
    rollout = generate(graphdef, params, PROMPTS, key=jax.random.key(0),
                       config=SamplingConfig(N_NEW, temperature=0.0))
    expected = [_hf_greedy(hf_model, p) for p in PROMPTS]
    np.testing.assert_array_equal(rollout.response, expected)
    # The serving engine reads the same checkpoint directory into the same weights.
    engine, engine_params = DecodeEngine.from_pretrained(path, max_concurrent_decodes=2, max_prefill_length=16,
                                                         max_target_length=32)
    assert engine.config == config
    for ours, theirs in zip(jax.tree.leaves(engine_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(ours, theirs)
