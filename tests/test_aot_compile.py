"""`tools/aot_compile.py`: presets' parameter counts, topology parsing, and compiles on 8 CPU devices."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxrl_llm.models.config import PRESETS, preset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import aot_compile

# Published sizes (model cards / safetensors index totals).
PUBLISHED = {"qwen2.5-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.62e9, "qwen3-0.6b": 0.596e9,
             "qwen3-8b": 8.19e9, "llama3.1-8b": 8.03e9}


def hand_count(c) -> int:
    """Parameters from the config fields, written out per layer as the Hugging Face modules hold them."""
    d, f, h, kvh, dh = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    q_out = h * dh * (2 if c.attention_output_gate else 1)
    attention = d * q_out + 2 * d * kvh * dh + h * dh * d
    attention += (q_out + 2 * kvh * dh) if c.attention_bias else 0
    attention += 2 * dh if c.qk_norm else 0
    hk, hv, k, v = c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    # Gated DeltaNet: in_proj_qkvz, in_proj_ba, conv1d over q/k/v, dt_bias + A_log, gated norm, out_proj.
    delta = d * (2 * hk * k + 2 * hv * v) + d * 2 * hv + (2 * hk * k + hv * v) * c.linear_conv_kernel_dim
    delta += 2 * hv + v + hv * v * d
    per_layer = {"attention": attention, "gated_deltanet": delta}
    layers = sum(per_layer[t] + 3 * d * f + 2 * d for t in c.resolved_layer_types)
    return c.vocab_size * d * (1 if c.tie_word_embeddings else 2) + layers + d


@pytest.mark.parametrize("name", sorted(PUBLISHED) + ["hybrid-3.7b"])
def test_preset_parameter_count(name):
    config = preset(name)
    count = aot_compile.param_count(config)
    assert count == hand_count(config)
    if name in PUBLISHED:
        assert count == pytest.approx(PUBLISHED[name], rel=3e-3)
    else:  # Qwen3-Next-80B's layout with dense MLPs: 36 delta-rule + 12 attention layers
        assert count == 3_673_504_512


def test_real_presets_match_their_families():
    assert preset("qwen2.5-7b").attention_bias and not preset("qwen2.5-7b").qk_norm
    assert preset("qwen3-8b").qk_norm and not preset("qwen3-8b").attention_bias
    assert preset("qwen3-0.6b").tie_word_embeddings and not preset("qwen3-8b").tie_word_embeddings
    assert preset("llama3.1-8b").rope_scaling["factor"] == 8.0
    assert preset("hybrid-3.7b").resolved_layer_types.count("attention") == 12
    assert set(PUBLISHED) | {"hybrid-3.7b"} <= set(PRESETS)


def test_parse_topology():
    t = aot_compile.parse_topology("v5p-64")  # v5p slices count TensorCores: 32 chips
    assert (t.platform, t.num_devices, t.tpu_topology, t.hbm_bytes) == ("tpu", 32, "v5p:2x4x4", 95 * 2 ** 30)
    t = aot_compile.parse_topology("v5e-8")
    assert (t.num_devices, t.tpu_topology, t.hbm_bytes) == (8, "v5e:2x4", 16 * 2 ** 30)
    assert aot_compile.parse_topology("h100-8").hbm_bytes == 80 * 10 ** 9
    assert aot_compile.parse_topology("cpu:4").num_devices == 4
    with pytest.raises(ValueError, match="v5p-64"):
        aot_compile.parse_topology("v5x-8")
    with pytest.raises(ValueError, match="chips"):
        aot_compile.parse_topology("v5e-12")


def test_count_collectives_and_oom_message():
    hlo = ("  %all-reduce.1 = f32[] all-reduce(f32[] %x), replica_groups={}\n"
           "  %ag = bf16[8,4] all-gather-start(bf16[1,4] %y)\n  %agd = bf16[8,4] all-gather-done(%ag)\n"
           "  %cp = f32[2] collective-permute(f32[2] %z)\n")
    assert aot_compile.count_collectives(hlo) == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 0,
                                                   "all-to-all": 0, "collective-permute": 1}
    msg = "RESOURCE_EXHAUSTED: ... memory required for HLO temporaries (29.32G) exceeds available HBM (15.75G)."
    assert aot_compile.out_of_memory_bytes(msg) == int(29.32 * 2 ** 30)
    assert aot_compile.out_of_memory_bytes("some other error") is None


def test_bad_override_fails_before_compiling():
    from jaxrl_llm.cli import ConfigError

    with pytest.raises(ConfigError, match="config.mesh.fsdpp"):
        aot_compile.main(["--topology", "cpu:8", "--preset", "tiny", "--config.mesh.fsdpp=2"])


@pytest.mark.slow
def test_cpu8_tiny_every_mode(tmp_path):
    out = tmp_path / "aot.json"
    records = aot_compile.main(["--topology", "cpu:8", "--preset", "tiny", "--mode", "all", "--batch", "8",
                                "--seq", "32", "--config.mesh.fsdp=8", "--config.model.num_layers=1",
                                "--config.train.micro_batches=2", "--json", str(out)])
    assert json.loads(out.read_text()) == records
    assert [r["mode"] for r in records] == ["sft", "rl_update", "rollout"]
    for r in records:
        mem = r["memory"]
        assert r["compiled"] and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
        assert min(mem["argument_bytes"], mem["output_bytes"], mem["peak_bytes"]) > 0
        assert mem["peak_bytes"] >= mem["argument_bytes"]
        assert set(r["collectives"]) == set(aot_compile.COLLECTIVES)
        assert r["collectives"]["all-gather"] > 0  # FSDP-sharded weights are gathered for the matmuls
        # The table [V=128, D=64] has its D split 8 ways: 1024 of its 8192 entries on each device.
        embed = next(a for a in r["largest_arrays"] if a["path"].endswith("embed"))
        assert "fsdp" in embed["spec"] and embed["per_device_bytes"] * 8 == embed["bytes"]
    rows = aot_compile.markdown_rows(records)
    assert [row.split(" | ")[:3] for row in rows] == [["| cpu:8", "tiny", m] for m in aot_compile.MODES]
    sft, rl, _ = records
    # Parameters + two Adam moments, sharded 8 ways: each device holds about an eighth of them.
    state_bytes = 3 * 4 * sft["params"]
    assert state_bytes / 8 < sft["memory"]["argument_bytes"] < state_bytes / 4
    assert sft["collectives"]["all-reduce"] > 0 and rl["micro_batches"] is None and sft["micro_batches"] == 2


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed here (the TPU compile needs jax[tpu] in its own environment)")
def test_tpu_topology_compile(tmp_path):
    out = tmp_path / "tpu.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "aot_compile.py"), "--topology", "v5e-8", "--preset", "tiny",
                    "--mode", "sft", "--batch", "8", "--seq", "32", "--json", str(out)], check=True, cwd=ROOT,
                   timeout=600)
    (r,) = json.loads(out.read_text())
    assert r["compiled"] and r["num_devices"] == 8 and r["fits"] and r["memory"]["peak_bytes"] > 0
