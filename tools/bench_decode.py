"""Decode throughput of the rollout sampler for fp32 / bf16 / int8 / int4 / fp8 weights.

Random weights of a preset (or flag-given) model shape; greedy decoding with no stop ids, so every
row generates exactly `--new-tokens` tokens. For each format the sampler is compiled once
(untimed), then timed over `--repeats` runs. Prefill is timed separately (`max_new_tokens=1`) and
subtracted, so `decode tok/s` counts only the one-token steps.

  python tools/bench_decode.py --preset tiny --batch 8 --prompt-len 32 --new-tokens 64 --out bench.json

fp32 runs in fp32; every other format computes in bf16 (bf16 weights, or quantized weights
dequantized / scaled inside the matmul: W8A16, W4A16, FP8 weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.models import Decoder, preset
from jaxrl_llm.quant import QuantArray, quantize_params
from jaxrl_llm.rollout import SamplingConfig, generate

FORMATS = ("fp32", "bf16", "int8", "int4", "fp8")
_SHAPE_FLAGS = {"layers": "num_layers", "hidden": "hidden_size", "intermediate": "intermediate_size",
                "heads": "num_heads", "kv_heads": "num_kv_heads", "head_dim": "head_dim", "vocab": "vocab_size"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="model preset: tiny, qwen2.5-0.5b")
    for flag in _SHAPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int, default=None,
                            help=f"override {_SHAPE_FLAGS[flag]}")
    parser.add_argument("--batch", type=int, default=8, help="rows decoded together")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list from {FORMATS}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per format (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"--formats must be among {FORMATS}; got unknown {unknown}")
    if min(args.batch, args.prompt_len, args.new_tokens, args.repeats) < 1:
        parser.error("--batch, --prompt-len, --new-tokens and --repeats must be >= 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (decode steps follow the first token)")
    args.formats = formats
    return args


def model_for(fmt: str, master: nnx.State, config) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) of the `fmt` variant, built from the fp32 master weights."""
    compute = "float32" if fmt == "fp32" else "bfloat16"
    cfg = config.replace(dtype=compute, param_dtype="float32" if fmt == "fp32" else "bfloat16")
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    if fmt in ("fp32", "bf16"):
        return graphdef, jax.tree.map(lambda x: x.astype(cfg.param_dtype), master)
    # Quantize from fp32 masters; the remaining (norm, bias, embedding) leaves are kept in bf16.
    quantized = quantize_params(master, fmt)
    return graphdef, jax.tree.map(lambda x: x if isinstance(x, QuantArray) else x.astype(jnp.bfloat16), quantized,
                                  is_leaf=lambda x: isinstance(x, QuantArray))


def weight_bytes(params) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(params))


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` (results blocked on) after one untimed compile-and-run."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_format(fmt, master, config, prompts, args) -> dict:
    graphdef, params = model_for(fmt, master, config)
    key = jax.random.key(0)

    def run(n_new):
        rollout = generate(graphdef, params, prompts, lengths=np.full(len(prompts), prompts.shape[1]), key=key,
                           config=SamplingConfig(n_new, temperature=0.0))
        return rollout.response

    total = timed(lambda: run(args.new_tokens), args.repeats)
    prefill = timed(lambda: run(1), args.repeats)
    decode = max(total - prefill, 1e-9)
    return {
        "format": fmt,
        "weight_mb": weight_bytes(params) / 2**20,
        "prefill_s": prefill,
        "total_s": total,
        "decode_tok_s": args.batch * (args.new_tokens - 1) / decode,
        "end_to_end_tok_s": args.batch * args.new_tokens / total,
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    overrides = {field: getattr(args, flag) for flag, field in _SHAPE_FLAGS.items() if getattr(args, flag) is not None}
    config = preset(args.preset, **overrides).replace(dtype="float32", param_dtype="float32")
    master = nnx.split(Decoder(config, rngs=nnx.Rngs(0)))[1]
    prompts = np.asarray(jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 0, config.vocab_size),
                         np.int32)
    rows = [bench_format(fmt, master, config, prompts, args) for fmt in args.formats]
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}  model: {args.preset} "
          f"L={config.num_layers} D={config.hidden_size} V={config.vocab_size}  batch={args.batch} "
          f"prompt={args.prompt_len} new={args.new_tokens}")
    print(f"{'format':<7}{'weights MB':>12}{'prefill s':>11}{'total s':>10}{'decode tok/s':>14}{'e2e tok/s':>11}")
    for r in rows:
        print(f"{r['format']:<7}{r['weight_mb']:>12.2f}{r['prefill_s']:>11.4f}{r['total_s']:>10.4f}"
              f"{r['decode_tok_s']:>14.1f}{r['end_to_end_tok_s']:>11.1f}")
    if args.out is not None:
        report = {"device": f"{device.platform} {device.device_kind}", "device_count": jax.device_count(),
                  "host": platform.node(), "jax": jax.__version__, "preset": args.preset,
                  "config": {k: getattr(config, k) for k in ("num_layers", "hidden_size", "intermediate_size",
                                                             "num_heads", "num_kv_heads", "head_dim", "vocab_size")},
                  "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                  "repeats": args.repeats, "results": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
