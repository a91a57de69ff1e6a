"""Benchmark the delta-rule implementations (forward and forward+backward) over variants and shapes.

Prints a table and writes JSON. Example (CPU, small):

    .venv/bin/python tools/bench_delta_rule.py --batch 1 4 --heads 2 --seq-lens 512 2048 \
        --head-dim 64 --impls recurrent chunked --out /tmp/bench_delta_rule.json

The implementations of one (batch, T, variant, mode) cell are timed interleaved (A B A B ...,
`bench_common.interleaved_times`) so that load from other processes hits all of them alike, each
timed call preceded by `--settle` untimed calls of the same function (default 1: at B = 4 the
recurrent backward's ~2 GB of per-token states made the next chunked call 2.5x slower); each
row reports the median and the minimum over the repeats, and the chunked/recurrent speedup is
given as the median of the per-round ratios with their range.

Throughput uses the chunked-algorithm FLOP model per token and head (2 flops per MAC):
forward = 6 K V + C (6 K + 4 V) + C^2 / 3, forward+backward = 3.5 x forward, for every impl, so
GFLOP/s compares implementations doing the same useful work.

Speedup ceiling (`--ceiling`, on by default when both recurrent and chunked run): the chunked forward
can beat the token scan only by running its flops faster, since it does at least as many
(6 K V per token in the state pass alone, against the scan's 7 K V). The tool measures, in the same
run, the machine's rate for the batched `[C, K] @ [K, V]` products the chunked path is made of
(one per chunk and head) and for one large square matmul, and reports
    ceiling = (batched-dot rate / recurrent rate) / (chunked flops / recurrent flops)
with the recurrent rate taken in the scan's own flop model (7 K V per token and head): the
speedup the chunked forward would reach if every one of its flops ran at the batched-dot rate
(an estimate, not a proof: at small shapes the batched-dot probe is overhead-bound and the
measured speedup can exceed it; the large-matmul column is the machine's best case).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxrl_llm.kernels.delta_rule import delta_rule

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402

VARIANTS = ("deltanet", "gdn", "kda", "fg2", "fg2plus")
IMPLS = ("recurrent", "chunked", "pallas")


def forward_flops_per_token_head(k: int, v: int, c: int) -> float:
    return 6 * k * v + c * (6 * k + 4 * v) + c * c / 3


def recurrent_flops_per_token_head(k: int, v: int) -> float:
    """The token scan: decay (K V) + read r^T S (2 K V) + rank-one write (2 K V) + output (2 K V)."""
    return 7 * k * v


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


def _blocking(fn, args):
    return lambda: jax.block_until_ready(fn(args))


def run_benchmark(opts):
    """Times every (batch, T, variant, mode) cell; returns (records, speedups)."""
    dtype = jnp.dtype(opts.dtype)
    v_dim = opts.value_dim or opts.head_dim
    modes = ("fwd",) if opts.forward_only else ("fwd", "fwd+bwd")
    fns = {impl: build_fns(impl, opts.chunk_size) for impl in opts.impls}  # jitted once, reused
    records, ratios = [], []
    for b in opts.batch:
        for t in opts.seq_lens:
            for variant in opts.variants:
                if variant == "fg2" and v_dim != opts.head_dim:
                    continue
                args = make_inputs(variant, b, t, opts.heads, opts.head_dim, v_dim, dtype)
                flops = b * t * opts.heads * forward_flops_per_token_head(
                    opts.head_dim, v_dim, opts.chunk_size)
                for mode in modes:
                    calls = {impl: _blocking(fns[impl][mode == "fwd+bwd"], args) for impl in opts.impls}
                    times = bench_common.interleaved_times(calls, repeats=opts.repeats, warmup=1,
                                                           settle=opts.settle)
                    mode_flops = flops * (3.5 if mode == "fwd+bwd" else 1.0)
                    for impl, secs in times.items():
                        med = bench_common.median(secs)
                        rec = dict(variant=variant, impl=impl, mode=mode, B=b, T=t, H=opts.heads,
                                   K=opts.head_dim, V=v_dim, chunk_size=opts.chunk_size,
                                   dtype=opts.dtype, ms=med * 1e3, ms_min=min(secs) * 1e3,
                                   gflops_per_s=mode_flops / med / 1e9, tokens_per_s=b * t / med)
                        records.append(rec)
                        print(format_row(rec), flush=True)
                    if "recurrent" in times and "chunked" in times:
                        ratios.append(speedup_record(variant, mode, b, t, times))
    return records, ratios


def _rate(fn, flops, repeats):
    """GFLOP/s of a blocking `fn` doing `flops` (median of `repeats` timed calls after one warm-up)."""
    secs = bench_common.interleaved_times({"fn": fn}, repeats=repeats, warmup=1)["fn"]
    return flops / bench_common.median(secs) / 1e9


def batched_dot_rate(n, c, k, v, repeats):
    """GFLOP/s of XLA's batched `[n, C, K] @ [n, K, V]` in float32: the chunked path's building block."""
    a, b = jnp.ones((n, c, k), jnp.float32), jnp.ones((n, k, v), jnp.float32)
    dot = jax.jit(lambda x, y: jnp.einsum("nck,nkv->ncv", x, y, precision=jax.lax.Precision.HIGHEST))
    return _rate(lambda: jax.block_until_ready(dot(a, b)), 2.0 * n * c * k * v, repeats)


def large_matmul_rate(size, repeats):
    """GFLOP/s of one float32 `[M, M] @ [M, M]` on the default device (the machine's matmul peak)."""
    a = jnp.ones((size, size), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    return _rate(lambda: jax.block_until_ready(dot(a, a)), bench_common.matmul_flops(size), repeats)


def speedup_ceilings(records, ratios, opts):
    """One row per forward (variant, B, T) cell: measured chunked/recurrent speedup against its ceiling."""
    v_dim = opts.value_dim or opts.head_dim
    k, c, h = opts.head_dim, opts.chunk_size, opts.heads
    flop_ratio = forward_flops_per_token_head(k, v_dim, c) / recurrent_flops_per_token_head(k, v_dim)
    peak = large_matmul_rate(opts.peak_size, opts.repeats)
    dot_rates, rows = {}, []
    for r in ratios:
        if r["mode"] != "fwd":
            continue
        b, t = r["B"], r["T"]
        if (b, t) not in dot_rates:
            dot_rates[(b, t)] = batched_dot_rate(b * h * -(-t // c), c, k, v_dim, opts.repeats)
        rec = next(x for x in records if x["impl"] == "recurrent" and x["mode"] == "fwd"
                   and x["variant"] == r["variant"] and x["B"] == b and x["T"] == t)
        rec_rate = b * t * h * recurrent_flops_per_token_head(k, v_dim) / (rec["ms"] * 1e-3) / 1e9
        dot = dot_rates[(b, t)]
        rows.append(dict(variant=r["variant"], B=b, T=t, recurrent_gflops=rec_rate,
                         batched_dot_gflops=dot, large_matmul_gflops=peak, flop_ratio=flop_ratio,
                         ceiling=dot / rec_rate / flop_ratio, ceiling_at_peak=peak / rec_rate / flop_ratio,
                         measured=r["median"]))
    return rows


def ceilings_table(rows):
    cells = [(r["variant"], r["B"], r["T"], f"{r['recurrent_gflops']:.1f}", f"{r['batched_dot_gflops']:.1f}",
              f"{r['large_matmul_gflops']:.1f}", f"{r['flop_ratio']:.2f}", f"{r['ceiling']:.1f}x",
              f"{r['ceiling_at_peak']:.1f}x", f"{r['measured']:.1f}x") for r in rows]
    return bench_common.markdown_table(
        ("variant", "B", "T", "recurrent GFLOP/s (7KV model)", "batched dot GFLOP/s",
         "large matmul GFLOP/s", "chunked/recurrent flops", "ceiling (batched dot)",
         "ceiling (large matmul)", "measured fwd"), cells)


def speedup_record(variant, mode, b, t, times, base="recurrent", target="chunked"):
    """Chunked-over-recurrent speedup of one cell from interleaved rounds: median, min, max."""
    per_round = bench_common.paired_ratios(times[base], times[target])
    return dict(variant=variant, mode=mode, B=b, T=t, median=bench_common.median(per_round),
                min=min(per_round), max=max(per_round),
                of_medians=bench_common.median(times[base]) / bench_common.median(times[target]))


HEADER = (f"{'variant':9} {'impl':9} {'mode':8} {'B':>3} {'T':>6} {'H':>3} {'K':>4} {'V':>4} "
          f"{'ms(med)':>10} {'ms(min)':>10} {'GFLOP/s':>9}")


def format_row(r):
    return (f"{r['variant']:9} {r['impl']:9} {r['mode']:8} {r['B']:>3} {r['T']:>6} {r['H']:>3} "
            f"{r['K']:>4} {r['V']:>4} {r['ms']:>10.2f} {r['ms_min']:>10.2f} {r['gflops_per_s']:>9.2f}")


def speedup_table(ratios):
    """Markdown table of chunked/recurrent speedups (median of per-round ratios and range)."""
    rows = [(r["variant"], r["mode"], r["B"], r["T"], f"{r['median']:.1f}x",
             f"{r['min']:.1f}-{r['max']:.1f}x") for r in ratios]
    return bench_common.markdown_table(
        ("variant", "mode", "B", "T", "chunked/recurrent (median)", "per-round range"), rows)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/delta_rule.json", help="JSON output path")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="one or more batch sizes")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--head-dim", type=int, default=64, help="K")
    p.add_argument("--value-dim", type=int, default=None, help="V (default: K)")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per cell")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--settle", type=int, default=1,
                   help="untimed calls before each timed one (the recurrent backward's gigabytes of "
                        "per-token states otherwise slow the call that follows it)")
    p.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the forward speedup ceiling (default: when recurrent and chunked both run)")
    p.add_argument("--peak-size", type=int, default=2048, help="M of the large matmul for --ceiling")
    return p.parse_args(argv)


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    device = jax.devices()[0]
    print(f"backend={jax.default_backend()} device={device.device_kind} jax={jax.__version__}")
    print(HEADER)
    records, ratios = run_benchmark(opts)
    if ratios:
        print(speedup_table(ratios))
    ceilings = []
    if opts.ceiling if opts.ceiling is not None else bool(ratios):
        ceilings = speedup_ceilings(records, ratios, opts)
        print(ceilings_table(ceilings))
    result = dict(backend=jax.default_backend(), device=device.device_kind,
                  metadata=bench_common.run_metadata(), options=vars(opts), records=records,
                  chunked_over_recurrent=ratios, speedup_ceilings=ceilings)
    bench_common.write_json(opts.out, result)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
