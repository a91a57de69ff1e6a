"""Benchmark the jitted SFT train step against the same step in PyTorch/`transformers`.

    python tools/bench_train_step.py --preset tiny --batch-size 16 --seq-len 128 --out bench.json
    python tools/bench_train_step.py --preset tiny --model num_layers=4 --model hidden_size=256 ...
    python tools/bench_train_step.py --preset tiny --host-devices 8 --mesh 2,2,2   # CPU mesh, JAX only
    python tools/bench_train_step.py --preset qwen2.5-0.5b --batch-size 8 --seq-len 1024 --peak-tflops 989
    python tools/bench_train_step.py --preset tiny --torch-threads 1,2,4   # torch at 1, 2 and 4 threads

Shared machines are noisy, so the speed figures are ratios taken in the same run:

* `speedup_vs_torch`: JAX tokens/s over PyTorch tokens/s for the same work, against torch at its
  best thread count. `--compare-torch` (default `auto`: on when torch and transformers import, the
  mesh has one device and the model is float32) builds the same model in `transformers`
  (`hf_config.to_hf_config(config)` -> `AutoConfig.for_model` -> `AutoModelForCausalLM.from_config`,
  fp32, eager) with our initial weights, and runs the same step: forward, the same masked
  next-token loss on the same batch, backward, global-norm clipping and AdamW with the same
  hyperparameters and learning-rate schedule. Torch runs at every intra-op thread count of
  `--torch-threads` (a comma list; default 1 and the number of available cores, the size of
  XLA:CPU's pool): on a shared machine a multi-threaded torch step stalls whenever one of its
  threads is descheduled, so fewer threads can be faster. Each count gets its own torch model and
  optimizer (the memory of one torch model per count), so each takes exactly JAX's updates. After
  one untimed step each (JAX compiles in it) and `--warmup` untimed rounds, the contenders are timed
  alternately (jax, torch@1, torch@2, jax, ...) `--steps` times, so a burst of load from elsewhere
  hits all of them; medians are reported. `speedup_vs_torch` is against the torch setting with the
  fastest median step (`torch_best_threads`); every setting's figures are in `torch_by_threads`.
  The first-step losses must agree (same weights, same batch), which shows they do the same work.
* MFU: achieved model FLOP/s over the matmul peak. The peak is `--peak-tflops` if given (e.g. an
  accelerator's datasheet number), else the best FLOP/s of a float32 `M x M x M` matmul measured
  in this run (JAX sharded over the same devices, and torch at each of its thread counts; the
  fastest is the machine's peak), which is what "peak" means on a CPU.

Model FLOPs per step = 6 * N * tokens + 12 * L * H * Dh * T * tokens, where N counts the matmul
parameters (every weight except the input embedding table; the lm_head counts once even when
tied) and the second term is attention's QK^T and AV (forward + backward, no causal discount).

The synthetic batch is `[B, T]` random tokens, one segment per row, with the loss masked off the
first quarter of each row (a prompt) and on the rest.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402
from torch_reference import COMPARE_CHOICES, build_torch_model, hf_state_dict, torch_blocker  # noqa: E402, F401

OPTIMIZER = {"learning_rate": 1e-4, "warmup_steps": 1, "weight_decay": 0.0, "grad_clip_norm": 1.0,
             "b1": 0.9, "b2": 0.95, "eps": 1e-8}


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
    p.add_argument("--steps", type=int, default=10, help="timed steps (per framework)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    p.add_argument("--matmul-size", type=int, default=2048, help="M for the M x M x M peak matmul")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="use this peak instead of measuring")
    p.add_argument("--compare-torch", choices=COMPARE_CHOICES, default="auto",
                   help="time the same step in PyTorch/transformers (auto: when possible)")
    p.add_argument("--torch-threads", default=None, metavar="N[,N...]",
                   help="torch intra-op thread counts to time, comma list (default: 1 and the core count)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("batch_size", "seq_len", "micro_batches", "steps", "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.seq_len < 2:
        p.error(f"--seq-len must be >= 2 (next-token targets); got {args.seq_len}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0; got {args.warmup}")
    try:
        args.torch_threads = bench_common.thread_counts(args.torch_threads, bench_common.available_cores())
    except ValueError as e:
        p.error(str(e))
    return args


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
    """All parameters except the input embedding table, plus the lm_head once if tied.

    `params`: a tree of arrays or of shape tuples.
    """
    import jax

    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, tuple))
    total = sum(int(math.prod(x if isinstance(x, tuple) else x.shape)) for x in leaves)
    embed = config.vocab_size * config.hidden_size
    return total - embed + (embed if config.tie_word_embeddings else 0)


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """`{tokens, positions, segment_ids, loss_mask}` each `[B, T]` int32 numpy; loss off the first T // 4."""
    import numpy as np

    rng = np.random.default_rng(seed)
    loss_mask = np.ones((batch_size, seq_len), np.int32)
    loss_mask[:, : seq_len // 4] = 0
    return {
        "tokens": rng.integers(0, vocab_size, (batch_size, seq_len)).astype(np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "loss_mask": loss_mask,
    }


def torch_masked_next_token_loss(logits, tokens, loss_mask, segment_ids):
    """`jaxrl_llm.train.loss.masked_next_token_loss` in torch: `(loss_sum, num_tokens)` of `[B, T, V]` logits."""
    import torch

    same_segment = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    weights = ((loss_mask[:, 1:] > 0) & same_segment).to(torch.float32)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target_logp = torch.gather(logp, -1, tokens[:, 1:, None].long())[..., 0]
    return -(target_logp * weights).sum(), weights.sum()


def make_torch_step(model, batch: dict, learning_rates: list[float], opt_cfg: dict):
    """`(step_once, box)`: one AdamW training step per call; `box["loss"]` is the latest loss (float).

    `learning_rates[i]` is the rate of update i (the JAX schedule's values), so both runs take the
    same updates.
    """
    import torch

    t = {k: torch.from_numpy(v.astype("int64")) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rates[0], betas=(opt_cfg["b1"], opt_cfg["b2"]),
                                  eps=opt_cfg["eps"], weight_decay=opt_cfg["weight_decay"])
    box = {"step": 0, "loss": float("nan")}

    def step_once():
        for group in optimizer.param_groups:
            group["lr"] = learning_rates[min(box["step"], len(learning_rates) - 1)]
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=t["tokens"], position_ids=t["positions"]).logits
        loss_sum, count = torch_masked_next_token_loss(logits, t["tokens"], t["loss_mask"], t["segment_ids"])
        loss = loss_sum / count.clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opt_cfg["grad_clip_norm"])
        optimizer.step()
        box["step"] += 1
        box["loss"] = float(loss.detach())

    return step_once, box


def _make_jax_step(args, config, mesh, batch, *, host_copy: bool):
    """`(step_once, box, param_shapes, host_params, total_steps, schedule)` for the SFT step on `mesh`.

    `host_params` is a host copy of the initial parameters (for the torch model) when `host_copy`,
    else None; `param_shapes` is the tree of parameter shapes.
    """
    import jax
    from flax import nnx

    from jaxrl_llm.models.decoder import Decoder
    from jaxrl_llm.parallel.init import init_sharded
    from jaxrl_llm.train.optim import make_optimizer, make_schedule
    from jaxrl_llm.train.sft import make_sft_step, shard_batch
    from jaxrl_llm.train.state import create_train_state

    parts, params, rest, shardings = init_sharded(lambda: Decoder(config, rngs=nnx.Rngs(0)), mesh)
    total_steps = 1 + args.warmup + args.steps
    optimizer = make_optimizer(OPTIMIZER, total_steps)
    schedule = make_schedule(OPTIMIZER, total_steps)
    param_shapes = jax.tree.map(lambda x: tuple(x.shape), params)
    # Copy before the first step: the state may alias `params`, and the step donates the state.
    host_params = jax.device_get(params) if host_copy else None
    state = create_train_state(params, optimizer, mesh, shardings, seed=0)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = make_sft_step(parts, optimizer, schedule, state_shardings, mesh, rest=rest,
                         num_micro_batches=args.micro_batches)
    device_batch = shard_batch(batch, mesh)
    box = {"state": state, "metrics": None}

    def step_once():
        box["state"], box["metrics"] = step(box["state"], device_batch)
        jax.block_until_ready((box["state"], box["metrics"]))

    return step_once, box, param_shapes, host_params, total_steps, schedule


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Time the JAX step (and, when possible, the torch step, interleaved); the result dict for JSON.

    `argv` is the command recorded in the result (default: `sys.argv`).
    """
    import jax

    from jaxrl_llm.models.config import preset
    from jaxrl_llm.parallel.mesh import make_mesh

    sizes = [int(s) for s in args.mesh.split(",")]
    if len(sizes) != 3:
        raise SystemExit(f"--mesh must be data,fsdp,tensor; got {args.mesh!r}")
    mesh = make_mesh(*sizes)
    config = preset(args.preset, **_model_overrides(args.model))
    blocker = torch_blocker(config, mesh.devices.size, args.compare_torch)
    if blocker is not None and args.compare_torch == "on":
        raise SystemExit(f"--compare-torch on, but {blocker}")
    counts = args.torch_threads if blocker is None else []

    load_at_start = bench_common.load_average()[0]
    b, t = args.batch_size, args.seq_len
    batch = synthetic_batch(config.vocab_size, b, t)
    jax_step, jax_box, shapes, host_params, total_steps, schedule = _make_jax_step(
        args, config, mesh, batch, host_copy=blocker is None)
    n_matmul = count_matmul_params(shapes, config)
    n_params = int(sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))))
    compile_s = bench_common.time_call(jax_step)
    jax_first_loss = float(jax_box["metrics"]["loss"])

    steps = {"jax": jax_step}
    torch_runs: dict[int, dict] = {}
    if blocker is None:
        import torch

        learning_rates = [float(schedule(i)) for i in range(total_steps)]
        initial_model = build_torch_model(config, host_params)
        for n in counts:
            # One model and optimizer per thread count: each must take exactly JAX's updates. Copies
            # of the still untouched initial model are cheaper than building more; the last count
            # trains the initial model itself.
            torch.set_num_threads(n)
            model = initial_model if n == counts[-1] else copy.deepcopy(initial_model)
            torch_step, torch_box = make_torch_step(model, batch, learning_rates, OPTIMIZER)
            first_step_s = bench_common.time_call(torch_step)
            torch_runs[n] = {"box": torch_box, "first_step_s": first_step_s, "first_loss": torch_box["loss"]}
            steps[bench_common.torch_label(n)] = bench_common.with_torch_threads(torch_step, n)
    times = bench_common.interleaved_times(steps, repeats=args.steps, warmup=args.warmup)

    flops_step = model_flops_per_token(config, t, n_matmul) * b * t
    peak, peak_source, matmul = _peak(args, mesh, counts)
    jax_s = bench_common.median(times["jax"])
    result = {
        **bench_common.run_metadata(argv),
        "load_average_1m_at_start": round(load_at_start, 2),
        "preset": args.preset,
        "model_overrides": _model_overrides(args.model),
        "params": n_params,
        "matmul_params": n_matmul,
        "mesh": dict(mesh.shape),
        "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
        "batch_size": b,
        "seq_len": t,
        "micro_batches": args.micro_batches,
        "steps": args.steps,
        "warmup": args.warmup,
        "timing": f"interleaved {'/'.join(steps)}, median of steps" if len(steps) > 1 else "median of steps",
        "compile_s": compile_s,
        "model_flops_per_step": flops_step,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        **({"jax_matmul_tflops": matmul["jax"] / 1e12} if matmul else {}),
        "jax_step_s_median": jax_s,
        "jax_tokens_per_s": b * t / jax_s,
        "jax_achieved_tflops": flops_step / jax_s / 1e12,
        "jax_mfu": flops_step / jax_s / peak,
        "jax_first_loss": jax_first_loss,
        "jax_final_loss": float(jax_box["metrics"]["loss"]),
        "torch_compared": blocker is None,
        "torch_skipped_reason": blocker,
    }
    if blocker is None:
        by_threads = {}
        for n, run_info in torch_runs.items():
            label = bench_common.torch_label(n)
            torch_s = bench_common.median(times[label])
            ratios = bench_common.paired_ratios(times[label], times["jax"])
            by_threads[str(n)] = {
                "step_s_median": torch_s,
                "tokens_per_s": b * t / torch_s,
                "achieved_tflops": flops_step / torch_s / 1e12,
                "mfu": flops_step / torch_s / peak,
                "first_step_s": run_info["first_step_s"],
                "first_loss": run_info["first_loss"],
                "final_loss": run_info["box"]["loss"],
                **({"matmul_tflops": matmul[label] / 1e12} if matmul else {}),
                "speedup_vs_torch": torch_s / jax_s,
                "speedup_vs_torch_paired_min": min(ratios),
                "speedup_vs_torch_paired_max": max(ratios),
            }
        best = min(counts, key=lambda n: by_threads[str(n)]["step_s_median"])
        chosen = by_threads[str(best)]
        result.update({
            # The unsuffixed torch_* and speedup_* keys are those of the best thread count.
            "torch_threads": best,
            "torch_best_threads": best,
            "torch_thread_counts": counts,
            "torch_attn_implementation": getattr(model.config, "_attn_implementation", None),
            **{f"torch_{k}": chosen[k] for k in _TORCH_FIELDS},
            **({"torch_matmul_tflops": max(v["matmul_tflops"] for v in by_threads.values())} if matmul else {}),
            **{k: chosen[k] for k in _SPEEDUP_FIELDS},
            "torch_by_threads": by_threads,
        })
    return result


_TORCH_FIELDS = ("step_s_median", "tokens_per_s", "achieved_tflops", "mfu", "first_step_s", "first_loss",
                 "final_loss")
_SPEEDUP_FIELDS = ("speedup_vs_torch", "speedup_vs_torch_paired_min", "speedup_vs_torch_paired_max")


def _peak(args, mesh, torch_threads: list[int]) -> tuple[float, str, dict]:
    """(peak FLOP/s, where it came from, `{contender: measured matmul FLOP/s}`; empty when given).

    Contenders: "jax" and `torch@N` for each of `torch_threads`.
    """
    if args.peak_tflops > 0:
        return args.peak_tflops * 1e12, "given", {}
    fns = {"jax": bench_common.jax_matmul_fn(mesh, args.matmul_size)}
    if torch_threads:
        torch_matmul = bench_common.torch_matmul_fn(args.matmul_size)
        for n in torch_threads:
            fns[bench_common.torch_label(n)] = bench_common.with_torch_threads(torch_matmul, n)
    times = bench_common.interleaved_times(fns, repeats=5, warmup=1)
    flops = {k: bench_common.best_flops(v, bench_common.matmul_flops(args.matmul_size)) for k, v in times.items()}
    best = max(flops, key=flops.get)
    source = f"measured fp32 {args.matmul_size}^3 matmul, best of {', '.join(flops)} ({best})"
    return flops[best], source, flops


def result_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """`(header, rows)` of the summary table: a column for JAX and, when compared, one per torch thread count."""
    counts = result.get("torch_thread_counts", []) if result["torch_compared"] else []
    header = ["", "jax"] + [bench_common.torch_label(n) for n in counts]
    by_threads = result.get("torch_by_threads", {})

    def row(label, key, fmt):
        return [label, fmt(result[f"jax_{key}"])] + [fmt(by_threads[str(n)][key]) for n in counts]

    rows = [
        row("step time (s, median)", "step_s_median", lambda v: f"{v:.4f}"),
        row("tokens/s", "tokens_per_s", lambda v: f"{v:,.0f}"),
        row("achieved TFLOP/s", "achieved_tflops", lambda v: f"{v:.4f}"),
        row("MFU", "mfu", lambda v: f"{100 * v:.1f}%"),
        row("first-step loss", "first_loss", lambda v: f"{v:.5f}"),
        row("final loss", "final_loss", lambda v: f"{v:.5f}"),
    ]
    if "jax_matmul_tflops" in result:
        rows.append(row("matmul TFLOP/s (peak run)", "matmul_tflops", lambda v: f"{v:.4f}"))
    pad = [""] * len(counts)
    if counts:
        rows.append(["jax speedup vs this column (pairs)", ""] + [
            f"{d['speedup_vs_torch']:.2f}x ({d['speedup_vs_torch_paired_min']:.2f}-"
            f"{d['speedup_vs_torch_paired_max']:.2f})" for d in (by_threads[str(n)] for n in counts)])
        best = bench_common.torch_label(result["torch_best_threads"])
        rows.append([f"speedup vs {best} (best; tokens/s ratio)", f"{result['speedup_vs_torch']:.2f}x"] + pad)
    model = f"{result['preset']} {json.dumps(result['model_overrides']) if result['model_overrides'] else ''}"
    rows += [
        ["model", model.strip()] + pad,
        ["params (matmul)", f"{result['params']:,} ({result['matmul_params']:,})"] + pad,
        ["mesh", ", ".join(f"{k}={v}" for k, v in result["mesh"].items())] + pad,
        ["batch x seq (micro)", f"{result['batch_size']} x {result['seq_len']} ({result['micro_batches']})"] + pad,
        ["compile (s)", f"{result['compile_s']:.2f}"] + pad,
        ["peak TFLOP/s", f"{result['peak_tflops']:.4f}"] + pad,
    ]
    if counts:
        rows.append(["threads", f"XLA:CPU pool ({result['cpu_cores']} cores)"] + [str(n) for n in counts])
    else:
        rows.append(["torch", f"not run: {result['torch_skipped_reason']}"])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.host_devices:
        # Must be set before JAX initialises its backends.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}").strip()
    script = os.path.relpath(__file__) if argv is None else "tools/bench_train_step.py"
    result = run(args, ["python", script] + list(sys.argv[1:] if argv is None else argv))
    header, rows = result_rows(result)
    table = bench_common.markdown_table if args.markdown else bench_common.format_table
    print(table(header, rows))
    print(f"peak: {result['peak_source']}; {result['cpu']}, {result['cpu_cores']} cores, "
          f"load {result['load_average_1m_at_start']} -> {result['load_average_1m_5m_15m'][0]}, {result['date_utc']}")
    if args.out:
        bench_common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
