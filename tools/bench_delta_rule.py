"""Benchmark the delta-rule implementations (forward and forward+backward) over variants and shapes.

Prints a table and writes JSON. Example (CPU, small):

    .venv/bin/python tools/bench_delta_rule.py --batch 1 --heads 2 --seq-lens 512 2048 \
        --head-dim 64 --impls recurrent chunked --out /tmp/bench_delta_rule.json

Throughput uses the chunked-algorithm FLOP model per token and head (2 flops per MAC):
forward = 6 K V + C (6 K + 4 V) + C^2 / 3, forward+backward = 3.5 x forward, for every impl, so
GFLOP/s compares implementations doing the same useful work.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from jaxrl_llm.kernels.delta_rule import delta_rule

VARIANTS = ("deltanet", "gdn", "kda", "fg2", "fg2plus")
IMPLS = ("recurrent", "chunked", "pallas")


def forward_flops_per_token_head(k: int, v: int, c: int) -> float:
    return 6 * k * v + c * (6 * k + 4 * v) + c * c / 3


def make_inputs(variant, b, t, h, k, v, dtype, seed=0):
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    normal = lambda *s: jax.random.normal(next(keys), s, jnp.float32)  # noqa: E731
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    args = dict(q=unit(normal(b, t, h, k)), k=unit(normal(b, t, h, k)), v=normal(b, t, h, v))
    if variant == "gdn":
        args["g"] = jax.nn.log_sigmoid(normal(b, t, h) + 3.0)
    if variant in ("kda", "fg2", "fg2plus"):
        args["g"] = jax.nn.log_sigmoid(normal(b, t, h, k) + 3.0)
    if variant in ("deltanet", "gdn", "kda"):
        args["beta"] = jax.nn.sigmoid(normal(b, t, h))
    if variant in ("fg2", "fg2plus"):
        args["beta"] = jax.nn.sigmoid(normal(b, t, h, k))
    if variant == "fg2plus":
        args["beta_v"] = jax.nn.sigmoid(normal(b, t, h, v))
    return {n: a.astype(dtype) for n, a in args.items()}


def build_fns(impl, chunk_size):
    run = functools.partial(delta_rule, impl=impl, chunk_size=chunk_size, output_final_state=True)

    def forward(args):
        return run(**args)

    def loss(args):
        o, s = run(**args)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    return jax.jit(forward), jax.jit(jax.grad(loss))


def time_call(fn, args, repeats):
    jax.block_until_ready(fn(args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(opts):
    dtype = jnp.dtype(opts.dtype)
    records = []
    for t in opts.seq_lens:
        for variant in opts.variants:
            v_dim = opts.value_dim or opts.head_dim
            if variant == "fg2" and v_dim != opts.head_dim:
                continue
            args = make_inputs(variant, opts.batch, t, opts.heads, opts.head_dim, v_dim, dtype)
            flops = opts.batch * t * opts.heads * forward_flops_per_token_head(
                opts.head_dim, v_dim, opts.chunk_size)
            for impl in opts.impls:
                fwd, fwd_bwd = build_fns(impl, opts.chunk_size)
                for mode, fn, mode_flops in (("fwd", fwd, flops), ("fwd+bwd", fwd_bwd, 3.5 * flops)):
                    if mode == "fwd+bwd" and opts.forward_only:
                        continue
                    sec = time_call(fn, args, opts.repeats)
                    rec = dict(variant=variant, impl=impl, mode=mode, B=opts.batch, T=t, H=opts.heads,
                               K=opts.head_dim, V=v_dim, chunk_size=opts.chunk_size, dtype=opts.dtype,
                               ms=sec * 1e3, gflops_per_s=mode_flops / sec / 1e9,
                               tokens_per_s=opts.batch * t / sec)
                    records.append(rec)
                    print(format_row(rec), flush=True)
    return records


HEADER = f"{'variant':9} {'impl':9} {'mode':8} {'B':>3} {'T':>6} {'H':>3} {'K':>4} {'V':>4} {'ms':>10} {'GFLOP/s':>9}"


def format_row(r):
    return (f"{r['variant']:9} {r['impl']:9} {r['mode']:8} {r['B']:>3} {r['T']:>6} {r['H']:>3} "
            f"{r['K']:>4} {r['V']:>4} {r['ms']:>10.2f} {r['gflops_per_s']:>9.2f}")


def speedups(records, base="recurrent", target="chunked"):
    """{(variant, mode, T): base_ms / target_ms} where both impls were measured."""
    ms = {(r["variant"], r["mode"], r["T"], r["impl"]): r["ms"] for r in records}
    return {f"{v}/{m}/T={t}": ms[(v, m, t, base)] / ms[(v, m, t, target)]
            for (v, m, t, i) in ms if i == target and (v, m, t, base) in ms}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/delta_rule.json", help="JSON output path")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--head-dim", type=int, default=64, help="K")
    p.add_argument("--value-dim", type=int, default=None, help="V (default: K)")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forward-only", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    device = jax.devices()[0]
    print(f"backend={jax.default_backend()} device={device.device_kind} jax={jax.__version__}")
    print(HEADER)
    records = run_benchmark(opts)
    ratio = speedups(records)
    for key, value in sorted(ratio.items()):
        print(f"chunked speedup over recurrent {key}: {value:.1f}x")
    result = dict(backend=jax.default_backend(), device=device.device_kind, jax=jax.__version__,
                  options=vars(opts), records=records, chunked_over_recurrent=ratio)
    with open(opts.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
