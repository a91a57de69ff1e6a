"""Benchmark the jitted SFT train step: tokens/s and model FLOPs utilisation (MFU).

    python tools/bench_train_step.py --preset tiny --batch-size 16 --seq-len 128 --out bench.json
    python tools/bench_train_step.py --preset qwen2.5-0.5b --mesh 1,-1,1 --batch-size 8 --seq-len 1024
    python tools/bench_train_step.py --preset tiny --host-devices 8 --mesh 2,2,2   # CPU mesh

Model FLOPs per step = 6 * N * tokens + 12 * L * H * Dh * T * tokens, where N counts the matmul
parameters (every weight except the input embedding table; the lm_head counts once even when
tied) and the second term is attention's QK^T and AV (forward + backward, no causal discount).
MFU = achieved model FLOP/s / peak FLOP/s. The peak is `--peak-tflops` if given (e.g. an
accelerator's datasheet number), else a large float32 matmul sharded over the same devices is
timed in this run and its FLOP/s is used, which is what "peak" means on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="ModelConfig preset (tiny, qwen2.5-0.5b)")
    p.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field, e.g. --model hidden_size=256 (repeatable)")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the rest)")
    p.add_argument("--host-devices", type=int, default=0, help="force N host CPU devices (CPU meshes)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--matmul-size", type=int, default=2048, help="M for the M x M x M peak matmul")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="use this peak instead of measuring")
    p.add_argument("--out", default="", help="write the results as JSON here")
    return p.parse_args(argv)


def _model_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--model expects FIELD=VALUE; got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def model_flops_per_token(config, seq_len: int, num_matmul_params: int) -> float:
    """Training FLOPs per token: 6 N + 12 L H Dh T."""
    return 6.0 * num_matmul_params + 12.0 * config.num_layers * config.num_heads * config.head_dim * seq_len


def count_matmul_params(params: dict, config) -> int:
    """All parameters except the input embedding table, plus the lm_head once if tied."""
    import jax

    total = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))
    embed = config.vocab_size * config.hidden_size
    return total - embed + (embed if config.tie_word_embeddings else 0)


def measure_matmul_flops(mesh, size: int, repeats: int = 5) -> float:
    """FLOP/s of a float32 `[M, M] @ [M, M]` with rows sharded over every device of `mesh`."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    a = jax.device_put(jnp.ones((size, size), jnp.float32), rows)
    b = jax.device_put(jnp.ones((size, size), jnp.float32), NamedSharding(mesh, PartitionSpec()))
    matmul = jax.jit(lambda x, y: x @ y, out_shardings=rows)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * size**3 / min(times)


def run(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from jaxrl_llm.models.config import preset
    from jaxrl_llm.models.decoder import Decoder
    from jaxrl_llm.parallel.init import init_sharded
    from jaxrl_llm.parallel.mesh import make_mesh
    from jaxrl_llm.train.optim import make_optimizer, make_schedule
    from jaxrl_llm.train.sft import make_sft_step, shard_batch
    from jaxrl_llm.train.state import create_train_state

    sizes = [int(s) for s in args.mesh.split(",")]
    if len(sizes) != 3:
        raise SystemExit(f"--mesh must be data,fsdp,tensor; got {args.mesh!r}")
    mesh = make_mesh(*sizes)
    config = preset(args.preset, **_model_overrides(args.model))
    parts, params, rest, shardings = init_sharded(lambda: Decoder(config, rngs=nnx.Rngs(0)), mesh)
    opt_cfg = {"learning_rate": 1e-4, "warmup_steps": 1, "weight_decay": 0.0, "grad_clip_norm": 1.0}
    total_steps = args.warmup + args.steps + 1
    optimizer = make_optimizer(opt_cfg, total_steps)
    state = create_train_state(params, optimizer, mesh, shardings, seed=0)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_sft_step(parts, optimizer, make_schedule(opt_cfg, total_steps), state_shardings, mesh,
                         rest=rest, num_micro_batches=args.micro_batches)

    b, t = args.batch_size, args.seq_len
    rng = np.random.default_rng(0)
    batch = shard_batch({
        "tokens": rng.integers(0, config.vocab_size, (b, t)),
        "positions": np.broadcast_to(np.arange(t), (b, t)),
        "segment_ids": np.ones((b, t)),
        "loss_mask": np.ones((b, t)),
    }, mesh)

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))

    n_matmul = count_matmul_params(params, config)
    flops_step = model_flops_per_token(config, t, n_matmul) * b * t
    achieved = flops_step / step_s
    if args.peak_tflops > 0:
        peak, peak_source = args.peak_tflops * 1e12, "given"
    else:
        peak, peak_source = measure_matmul_flops(mesh, args.matmul_size), f"measured fp32 {args.matmul_size}^3 matmul"
    return {
        "preset": args.preset,
        "model_overrides": _model_overrides(args.model),
        "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(params))),
        "matmul_params": n_matmul,
        "mesh": dict(mesh.shape),
        "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
        "batch_size": b,
        "seq_len": t,
        "micro_batches": args.micro_batches,
        "compile_s": compile_s,
        "step_s_median": step_s,
        "tokens_per_s": b * t / step_s,
        "model_flops_per_step": flops_step,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "mfu": achieved / peak,
        "final_loss": float(metrics["loss"]),
    }


def format_table(result: dict) -> str:
    rows = [
        ("model", f"{result['preset']} {result['model_overrides'] or ''}".strip()),
        ("params (matmul)", f"{result['params']:,} ({result['matmul_params']:,})"),
        ("mesh", ", ".join(f"{k}={v}" for k, v in result["mesh"].items())),
        ("devices", result["devices"]),
        ("batch x seq (micro)", f"{result['batch_size']} x {result['seq_len']} ({result['micro_batches']})"),
        ("compile (s)", f"{result['compile_s']:.2f}"),
        ("step time (s, median)", f"{result['step_s_median']:.4f}"),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}"),
        ("achieved TFLOP/s", f"{result['achieved_tflops']:.4f}"),
        ("peak TFLOP/s", f"{result['peak_tflops']:.4f} ({result['peak_source']})"),
        ("MFU", f"{100 * result['mfu']:.1f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.host_devices:
        # Must be set before JAX initialises its backends.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    result = run(args)
    print(format_table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
