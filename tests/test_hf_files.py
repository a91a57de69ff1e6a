"""Hugging Face files: stale weights never shadow a new save, and every bad file is named."""

import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxrl_llm.models.config import tiny
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.models.hf import load_pretrained, save_pretrained

CONFIG = tiny(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
              head_dim=8, tie_word_embeddings=False)


def saved(tmp_path, seed=0, name="ckpt"):
    model = Decoder(CONFIG, rngs=nnx.Rngs(seed))
    return save_pretrained(model, CONFIG, tmp_path / name), model


def embed_of(model):
    return np.asarray(model.embed.get_value() if hasattr(model.embed, "get_value") else model.embed.value)


def test_a_save_over_a_sharded_checkpoint_removes_its_index_and_shards(tmp_path):
    path, old = saved(tmp_path, seed=0)
    # Turn the first save into a sharded one: an index and a shard file, as `transformers` writes.
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    save_file(tensors, str(path / "model-00001-of-00001.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in tensors}}))
    (path / "tokenizer.json").write_text("{}")
    new = Decoder(CONFIG, rngs=nnx.Rngs(1))
    save_pretrained(new, CONFIG, path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, _ = load_pretrained(path)
    np.testing.assert_array_equal(embed_of(loaded), embed_of(new))
    assert not np.array_equal(embed_of(loaded), embed_of(old))


def rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_integer_stored_weight_is_an_error_naming_it(tmp_path):
    path, _ = saved(tmp_path)
    rewrite(path, lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"].astype(np.int32)))
    with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' in .* is stored as I32; weights must be "
                                         r"floating point"):
        load_pretrained(path)


def test_unexpected_tensors_are_an_error_unless_allowed(tmp_path):
    path, model = saved(tmp_path)
    rewrite(path, lambda t: t.update({"model.layers.7.mlp.up_proj.weight": np.zeros((2, 2), np.float32),
                                      "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}))
    with pytest.raises(ValueError, match=r"holds 1 tensor\(s\) this config has no place for, e\.g\. "
                                         r"\['model.layers.7.mlp.up_proj.weight'\]"):
        load_pretrained(path)
    loaded, _ = load_pretrained(path, allow_unexpected=True)
    np.testing.assert_array_equal(embed_of(loaded), embed_of(model))


def test_damaged_files_are_named(tmp_path):
    path, _ = saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: truncated: its header describes \d+ bytes, the file has"):
        load_pretrained(path)
    (path / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(ValueError, match=r"model.safetensors: not a safetensors file \(1 bytes"):
        load_pretrained(path)
    (path / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match=r"header length 1000000000 exceeds the file"):
        load_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        load_pretrained(path)
    with pytest.raises(FileNotFoundError, match=r"nowhere/config.json not found"):
        load_pretrained(tmp_path / "nowhere")


def test_a_bad_index_is_named(tmp_path):
    path, _ = saved(tmp_path)
    (path / "model.safetensors.index.json").write_text('{"weight_map": {"model.norm.weight": "gone.safetensors"}}')
    with pytest.raises(FileNotFoundError, match=r"index.json names shard files that do not exist: \['gone.safetensors'\]"):
        load_pretrained(path)
    (path / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"index.json: not a safetensors index with a 'weight_map'"):
        load_pretrained(path)
