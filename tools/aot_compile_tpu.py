"""Compile the fused delta-rule Pallas kernels with Mosaic for a TPU topology, without a TPU.

Through libtpu's compile-only topologies (`jax.experimental.topologies`, via `tools/aot_compile.py`)
this lowers and compiles, per variant and per topology, the three fused kernels on TPU's block
placement (`pallas_fused.TimeLayout`, `mosaic_blocks=True`) and the Mosaic compiler parameters the
`pallas` impl uses (`pallas.TPU_FUSED_VMEM_BYTES`): the forward (`fused_forward`), the state
replay (`chunk_entry_states`) and the backward (`fused_backward`, which includes the replay), and
`delta_rule(impl="pallas")` forward + backward of `sum(o) + sum(final_state)` as the model calls
it. For each it prints whether Mosaic accepted it and XLA's memory analysis (arguments, outputs,
temporaries: the head-major copies, relayouts and the stored chunk states live there). Needs
`jax[tpu]` in the environment, no TPU:

    PYTHONPATH=. /tmp/tpuvenv/bin/python tools/aot_compile_tpu.py --topologies v5e-4 v6e-4 \\
        --batch 8 --seq-len 4096 --heads 16 --out /tmp/aot_tpu.json

A compile failure (Mosaic's block rule, scoped VMEM) is reported with its message, not raised.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

KERNELS = ("fused_forward", "chunk_entry_states", "fused_backward", "delta_rule_fwd_bwd")
VARIANTS = ("deltanet", "gdn", "kda", "fg2", "fg2plus")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topologies", nargs="+", default=["v5e-4", "v6e-4"], help="slices (one chip of each is compiled for)")
    p.add_argument("--variants", nargs="+", default=["gdn", "kda"], choices=VARIANTS)
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--value-heads", type=int, default=None, help="HV (GQA when > heads)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--out", default=None, help="JSON file for the records")
    p.add_argument("--one-topology", default=None, help=argparse.SUPPRESS)  # child process
    return p.parse_args(argv)


def kernel_jobs(variant, opts, sharding):
    """{name: (function, abstract arguments)} for one variant (kernel inputs as pallas.py builds them)."""
    import jax
    import jax.numpy as jnp
    from aot_compile_gpu import input_structs

    from jaxrl_llm.kernels.delta_rule import delta_rule
    from jaxrl_llm.kernels.delta_rule.pallas import _backward_block_v, _fused_mosaic_params, _kernel_gates
    from jaxrl_llm.kernels.delta_rule.pallas_backward import chunk_entry_states, fused_backward
    from jaxrl_llm.kernels.delta_rule.pallas_fused import fused_forward

    b, t, h, d = opts.batch, opts.seq_len, opts.heads, opts.head_dim
    hv = opts.value_heads or h
    dtype = jnp.dtype(opts.dtype)
    args = input_structs(variant, b, t, h, d, d, dtype, sharding, hv)
    s0 = jax.ShapeDtypeStruct((b, hv, d, d), jnp.float32, sharding=sharding)
    common = dict(chunk=opts.chunk_size, interpret=False, compiler_params=_fused_mosaic_params(),
                  operand_dtype=jnp.bfloat16 if dtype == jnp.bfloat16 else jnp.float32, mosaic_blocks=True)
    scale = d**-0.5

    def gates(a):
        return _kernel_gates(a.get("g"), a.get("beta"), a["v"])

    def forward(a, s):
        g, beta = gates(a)
        return fused_forward(a["q"], a["k"], a["v"], g, beta, a.get("beta_v"), scale, s, block_v=d, **common)

    def states(a, s):
        g, beta = gates(a)
        return chunk_entry_states(a["k"], a["v"], g, beta, a.get("beta_v"), s, block_v=d, **common)

    def backward(a, s, d_o, d_s):
        g, beta = gates(a)
        return fused_backward(a["q"], a["k"], a["v"], g, beta, a.get("beta_v"), s, scale, None, d_o, d_s,
                              block_v=_backward_block_v(d), **common)

    def loss(a, s):
        o, s_final = delta_rule(**a, initial_state=s, impl="pallas", chunk_size=opts.chunk_size,
                                output_final_state=True, interpret=False)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s_final)

    return {
        "fused_forward": (forward, (args, s0)),
        "chunk_entry_states": (states, (args, s0)),
        "fused_backward": (backward, (args, s0, args["v"], s0)),
        # value_and_grad: with grad alone the forward's outputs are dead and XLA drops the kernel.
        "delta_rule_fwd_bwd": (jax.value_and_grad(loss, argnums=(0, 1)), (args, s0)),
    }


def compile_topology(opts):
    """Compiles every (variant, kernel) for `opts.one_topology` in this process; returns records."""
    import aot_compile

    target = aot_compile.parse_topology(opts.one_topology)
    if target.platform != "tpu":
        raise ValueError(f"--topologies takes TPU slices (v5e-4, v6e-8, ...); got {opts.one_topology!r}")
    aot_compile._prepare_environment(target)
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = aot_compile.target_devices(target)
    jax.config.update("jax_default_device", devices[0])  # Mosaic reads the chip from the default device
    sharding = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())
    records = []
    for variant in opts.variants:
        jobs = kernel_jobs(variant, opts, sharding)
        for name in opts.kernels:
            fn, args = jobs[name]
            rec = dict(topology=opts.one_topology, device_kind=devices[0].device_kind, variant=variant,
                       kernel=name)
            t0 = time.perf_counter()
            try:
                mem = jax.jit(fn).lower(*args).compile().memory_analysis()
                rec.update(compiled=True, argument_bytes=int(mem.argument_size_in_bytes),
                           output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes))
            except Exception as e:  # a compile failure is the finding: report it, keep going
                rec.update(compiled=False, error=f"{type(e).__name__}: {e}"[:2000])
            rec["compile_s"] = time.perf_counter() - t0
            records.append(rec)
            print(format_record(rec), flush=True)
    return records


def format_record(rec):
    head = f"{rec['topology']:7} {rec['variant']:8} {rec['kernel']:20}"
    if not rec["compiled"]:
        return f"{head} FAILED: {rec['error'][:600]}"
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    return (f"{head} compiled in {rec['compile_s']:.1f}s; args {mb(rec['argument_bytes'])}, outputs "
            f"{mb(rec['output_bytes'])}, temporaries {mb(rec['temp_bytes'])}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    if opts.one_topology:
        print(json.dumps(compile_topology(opts)), flush=True)
        return 0
    records = []
    for topology in opts.topologies:
        # One process per topology: libtpu's compile-only topology is fixed once jax is initialised.
        child = subprocess.run([sys.executable, __file__, *argv, "--one-topology", topology],
                               capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        for line in lines[:-1]:
            print(line, flush=True)
        if child.returncode or not lines:
            print(f"{topology}: compile process failed (rc {child.returncode}): {child.stderr[-2000:]}")
            records.append(dict(topology=topology, compiled=False, error=child.stderr[-2000:]))
            continue
        records.extend(json.loads(lines[-1]))
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text(json.dumps(dict(options=vars(opts), records=records), indent=2))
        print(f"wrote {opts.out}")
    return 0 if all(r["compiled"] for r in records) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # aot_compile, aot_compile_gpu
    sys.exit(main())
