"""Compile the delta-rule kernels for an NVIDIA H100 on a machine without a GPU (deviceless AOT).

XLA's GPU compiler can target a described device instead of an attached one: this script builds a
compile-only H100 topology from `H100_TARGET_CONFIG` and compiles `delta_rule` (forward, and the
value and gradient of `sum(o) + sum(final_state)`) for `impl="pallas"` (Triton kernels inside) and
`impl="chunked"` (XLA only) at the issue's benchmark shape. The Pallas fwd+bwd rows are compiled
once per `--pallas-backwards` entry: "pallas" (the fused backward kernels, `pallas_backward.py`,
value tile `--backward-block-v`, default the kernel's own) and "chunked" (the chunked JAX VJP). It proves the Pallas kernel goes through
Triton -> PTX -> SASS for sm_90 and reports XLA's memory analysis: input + output bytes give the
memory-roofline time, temporaries (written and read back at least once) a traffic floor for the
design, and the chunked FLOP model gives compute floors at the bf16 tensor-core and fp32 peaks;
it measures no speed. Needs the CUDA plugin in the environment, not a GPU:

    python -m venv /tmp/gpuvenv && /tmp/gpuvenv/bin/pip install "jax[cuda12]==0.10.2"
    PYTHONPATH=. /tmp/gpuvenv/bin/python tools/aot_compile_gpu.py --out /tmp/aot_h100.json

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

# A compile-only topology: never touch a (missing) device.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from jaxrl_llm.kernels.delta_rule import delta_rule  # noqa: E402
from jaxrl_llm.kernels.delta_rule.pallas import pallas_delta_rule  # noqa: E402

# H100 SXM5 80 GB as XLA's GpuTargetConfig text proto: 132 SMs, 228 KB shared memory per SM
# (227 KB opt-in per block), 64 K registers per SM, 50 MB L2, 3.35 TB/s HBM3, compute capability 9.0.
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

H100_HBM_BYTES_PER_S = 3.35e12
H100_BF16_TENSOR_FLOPS = 989e12  # dense
H100_FP32_FLOPS = 67e12  # CUDA cores (fp32 operands with ieee precision)


def forward_flops(b, t, h, k, v, c):
    """The chunked forward's useful work (as `bench_delta_rule.forward_flops_per_token_head`)."""
    return b * t * h * (6 * k * v + c * (6 * k + 4 * v) + c * c / 3)


def h100_sharding():
    topology = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                            topology="1x1x1")
    mesh = topologies.make_mesh(topology, (1,), ("x",))
    return NamedSharding(mesh, PartitionSpec())


VARIANTS = ("deltanet", "gdn", "kda", "fg2", "fg2plus")


def input_structs(variant, b, t, h, k, v, dtype, sharding, value_heads=None):
    """`variant`'s `delta_rule` inputs as abstract arrays placed on the compile-only device."""
    hv = value_heads or h
    s = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)  # noqa: E731
    args = dict(q=s(b, t, h, k), k=s(b, t, h, k), v=s(b, t, hv, v))
    if variant == "gdn":
        args["g"] = s(b, t, hv, dt=jnp.float32)
    if variant in ("kda", "fg2", "fg2plus"):
        args["g"] = s(b, t, hv, k, dt=jnp.float32)
    if variant in ("deltanet", "gdn", "kda"):
        args["beta"] = s(b, t, hv, dt=jnp.float32)
    if variant in ("fg2", "fg2plus"):
        args["beta"] = s(b, t, hv, k, dt=jnp.float32)
    if variant == "fg2plus":
        args["beta_v"] = s(b, t, hv, v, dt=jnp.float32)
    return args


def pallas_with_backward(backward, block_v, chunk_size):
    """`delta_rule(impl="pallas")` on a zero initial state with the backward chosen explicitly."""

    def run(q, k, v, g=None, beta=None, beta_v=None):
        b, _, hv, vd = v.shape
        kd = q.shape[-1]
        s0 = jnp.zeros((b, hv, kd, vd), jnp.float32)
        return pallas_delta_rule(q, k, v, g, beta, beta_v, s0, kd**-0.5, None, chunk_size, False,
                                 "auto", backward, block_v)

    return run


def build(impl, mode, chunk_size, backward=None, block_v=None):
    if backward is None:
        run = functools.partial(delta_rule, impl=impl, chunk_size=chunk_size, output_final_state=True,
                                interpret=False)
    else:
        run = pallas_with_backward(backward, block_v, chunk_size)
    if mode == "fwd":
        return jax.jit(lambda a: run(**a))

    def loss(a):
        o, s = run(**a)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    # value_and_grad: with grad alone the forward's outputs are dead and XLA drops the kernel.
    return jax.jit(jax.value_and_grad(loss))


def compile_one(variant, impl, mode, structs, chunk_size, flops, backward=None, block_v=None):
    fn = build(impl, mode, chunk_size, backward, block_v)
    t0 = time.perf_counter()
    lowered = fn.lower(structs)
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    text = lowered.as_text()
    mem = compiled.memory_analysis()
    io_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes
    # Compile-only executables carry no cost analysis; the memory analysis bounds the traffic:
    # every input is read and every output written once (the roofline), and every byte of
    # temporaries is written and read back at least once.
    return dict(
        variant=variant, impl=impl, mode=mode, backward=backward, backward_block_v=block_v,
        compiled=True, compile_s=seconds,
        triton_kernels=text.count("__gpu$xla.gpu.triton"),
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        roofline_ms=io_bytes / H100_HBM_BYTES_PER_S * 1e3,
        traffic_floor_ms=(io_bytes + 2 * mem.temp_size_in_bytes) / H100_HBM_BYTES_PER_S * 1e3,
        model_gflop=flops / 1e9,
        compute_floor_ms_bf16=flops / H100_BF16_TENSOR_FLOPS * 1e3,
        compute_floor_ms_fp32=flops / H100_FP32_FLOPS * 1e3,
    )


def format_record(rec):
    backward = rec.get("backward")
    impl = rec["impl"] if backward is None else f"{rec['impl']}/{backward}-bwd"
    if rec.get("backward_block_v"):
        impl += f"(BV={rec['backward_block_v']})"
    head = f"{rec['variant']:8} {impl:22} {rec['mode']:8}"
    if not rec["compiled"]:
        return f"{head} FAILED: {rec['error'][:500]}"
    return (f"{head} compiled in {rec['compile_s']:.1f}s; Triton kernels {rec['triton_kernels']}; "
            f"in+out {(rec['argument_bytes'] + rec['output_bytes']) / 1e6:.0f} MB (roofline "
            f"{rec['roofline_ms']:.3f} ms); temporaries {rec['temp_bytes'] / 1e6:.0f} MB (traffic floor "
            f"{rec['traffic_floor_ms']:.3f} ms); {rec['model_gflop']:.0f} GFLOP (compute floor "
            f"{rec['compute_floor_ms_bf16']:.3f} ms bf16 tensor cores, {rec['compute_floor_ms_fp32']:.2f} ms fp32)")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--value-heads", type=int, default=None, help="HV (GQA when > heads)")
    p.add_argument("--variants", nargs="+", default=["gdn"], choices=VARIANTS)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--impls", nargs="+", default=["pallas", "chunked"], choices=["pallas", "chunked"])
    p.add_argument("--pallas-backwards", nargs="+", default=["pallas", "chunked"],
                   choices=["pallas", "chunked"], help="backward of the pallas fwd+bwd rows")
    p.add_argument("--backward-block-v", type=int, nargs="+", default=[None],
                   help="value tiles of the fused backward (default: the kernel's own)")
    p.add_argument("--out", default="benchmarks/aot_h100.json")
    return p.parse_args(argv)


def row_specs(opts):
    """(impl, mode, backward, backward block) of every row: pallas fwd+bwd once per backward."""
    for impl in opts.impls:
        yield impl, "fwd", None, None
        if impl != "pallas":
            yield impl, "fwd+bwd", None, None
            continue
        for backward in opts.pallas_backwards:
            for block_v in (opts.backward_block_v if backward == "pallas" else [None]):
                yield impl, "fwd+bwd", backward, block_v


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    sharding = h100_sharding()
    device = sharding.mesh.devices.flat[0]
    print(f"target: {device.device_kind} (compile-only), jax {jax.__version__}")
    rows = []
    fwd_flops = forward_flops(opts.batch, opts.seq_len, opts.value_heads or opts.heads, opts.head_dim,
                              opts.head_dim, opts.chunk_size)
    for variant in opts.variants:
        structs = input_structs(variant, opts.batch, opts.seq_len, opts.heads, opts.head_dim,
                                opts.head_dim, jnp.dtype(opts.dtype), sharding, opts.value_heads)
        for impl, mode, backward, block_v in row_specs(opts):
            try:
                rec = compile_one(variant, impl, mode, structs, opts.chunk_size,
                                  fwd_flops * (3.5 if mode == "fwd+bwd" else 1.0), backward, block_v)
            except Exception as e:  # a compile failure is the finding: report it, keep going
                rec = dict(variant=variant, impl=impl, mode=mode, backward=backward,
                           backward_block_v=block_v, compiled=False,
                           error=f"{type(e).__name__}: {e}"[:2000])
            rows.append(rec)
            print(format_record(rec), flush=True)
    result = dict(target=device.device_kind, jax=jax.__version__, options=vars(opts), records=rows)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {opts.out}")
    return 0 if all(r["compiled"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
