"""Decode throughput of the rollout sampler (fp32 / bf16 / int8 / int4 / fp8) against `transformers`.

    python tools/bench_decode.py --preset tiny --batch 8 --prompt-len 32 --new-tokens 64 --out bench.json
    python tools/bench_decode.py --preset tiny --layers 4 --hidden 256 --intermediate 1024 --heads 4 \\
        --kv-heads 2 --head-dim 64 --vocab 4096 --batch 1 --prompt-len 32 --new-tokens 64
    python tools/bench_decode.py --preset qwen2.5-0.5b --batch 64 --prompt-len 256 --new-tokens 256
    python tools/bench_decode.py --preset tiny --torch-threads 1,2,4   # torch at 1, 2 and 4 threads

Random weights of a preset (or flag-given) shape; greedy decoding of `[B, P]` random prompts with
no stop ids, so every row generates exactly `--new-tokens` (N) tokens. fp32 computes in fp32;
every other format computes in bf16 (bf16 weights, or quantized weights dequantized / scaled
inside the matmul: W8A16, W4A16, FP8 weights).

Shared machines are noisy, so the speed figures are ratios taken in the same run:

* `speedup_vs_torch`: our decode tokens/s over PyTorch's for the same work, against torch at its
  best thread count. `--compare-torch` (default `auto`: on when JAX runs on the CPU, torch and
  transformers import, fp32 is among `--formats` and the model has a `transformers` equivalent)
  builds the same model in `transformers` from our fp32 weights (`tools/torch_reference.py`) and
  decodes the same prompts with `model.generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)`
  (its default dynamic KV cache, `sdpa` attention, fp32) at every intra-op thread count of
  `--torch-threads` (a comma list; default 1 and the number of available cores, the size of
  XLA:CPU's pool): on a shared machine a multi-threaded torch run stalls whenever one of its
  threads is descheduled, so fewer threads can be faster. Each count is its own contender
  (`torch@N fp32` rows, `torch_by_threads` in the JSON); the baseline is the one with the shortest
  decode time (`torch_best_threads`). The greedy tokens of our fp32 sampler and of torch at every
  thread count must be identical (the script stops with an error naming the first difference
  otherwise): all do the same work. Every row's speed is also given relative to that best torch
  fp32 baseline (end to end too, against the same thread count).
* `bandwidth_fraction`: weight bytes streamed per decode step (every parameter except the input
  embedding table, which is only gathered; with tied embeddings it is the lm_head and counts) over
  the time of one decode step, as a fraction of the memory bandwidth measured in this run: the
  best of `--repeats` `y = x + 1` passes over a `--stream-mb` MiB float32 array (JAX, and torch
  at each of its thread counts when compared), counting each byte read and written. The KV cache reads are not counted, and a
  model small enough to stay in the CPU caches can exceed the DRAM figure.

Timing. Each contender is called once untimed (JAX compiles then), then `--warmup` untimed
rounds, then `--repeats` rounds in which every contender runs once, alternately (A B A B ...), so
that a burst of load from elsewhere hits all of them. Each format runs twice per round: the full
decode (N tokens) and a prefill-only run (`max_new_tokens=1`); decode time = median(full) -
median(prefill), over the N - 1 one-token steps. (Our sampler's response buffer is a power of two
>= 16 slots, so the prefill-only run's KV cache is shorter than the full run's: a slight
overestimate of our decode time when N > 16.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402
from torch_reference import COMPARE_CHOICES, build_torch_model, torch_blocker  # noqa: E402

FORMATS = ("fp32", "bf16", "int8", "int4", "fp8")
TORCH_DECODER = ("transformers generate(do_sample=False, max_new_tokens=N, min_new_tokens=N), "
                 "default dynamic KV cache, fp32")
_SHAPE_FLAGS = {"layers": "num_layers", "hidden": "hidden_size", "intermediate": "intermediate_size",
                "heads": "num_heads", "kv_heads": "num_kv_heads", "head_dim": "head_dim", "vocab": "vocab_size"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset: tiny, qwen2.5-0.5b")
    for flag in _SHAPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int, default=None,
                            help=f"override {_SHAPE_FLAGS[flag]}")
    parser.add_argument("--batch", type=int, default=8, help="rows decoded together")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list from {FORMATS}")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first (compiling) calls")
    parser.add_argument("--compare-torch", choices=COMPARE_CHOICES, default="auto",
                        help="time the same decoding in PyTorch/transformers (auto: when possible)")
    parser.add_argument("--torch-threads", default=None, metavar="N[,N...]",
                        help="torch intra-op thread counts to time, comma list (default: 1 and the core count)")
    parser.add_argument("--stream-mb", type=int, default=256, help="MiB of the bandwidth-measuring array")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        parser.error(f"--formats must be a non-empty comma list from {FORMATS}; got {args.formats!r}")
    if min(args.batch, args.prompt_len, args.repeats, args.stream_mb) < 1:
        parser.error("--batch, --prompt-len, --repeats and --stream-mb must be >= 1")
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be >= 2 (decode steps follow the first token); got {args.new_tokens}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; got {args.warmup}")
    try:
        args.torch_threads = bench_common.thread_counts(args.torch_threads, bench_common.available_cores())
    except ValueError as e:
        parser.error(str(e))
    args.formats = formats
    return args


def model_config(args: argparse.Namespace):
    """The fp32 `ModelConfig` of `--preset` with the shape flags applied."""
    from jaxrl_llm.models import preset  # noqa: PLC0415

    overrides = {field: getattr(args, flag) for flag, field in _SHAPE_FLAGS.items() if getattr(args, flag) is not None}
    return preset(args.preset, **overrides).replace(dtype="float32", param_dtype="float32")


def model_for(fmt: str, master, config):
    """(graphdef, params) of the `fmt` variant, built from the fp32 master weights (an `nnx.State`)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from jaxrl_llm.models import Decoder  # noqa: PLC0415
    from jaxrl_llm.quant import QuantArray, quantize_params  # noqa: PLC0415

    compute = "float32" if fmt == "fp32" else "bfloat16"
    cfg = config.replace(dtype=compute, param_dtype=compute)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    if fmt in ("fp32", "bf16"):
        return graphdef, jax.tree.map(lambda x: x.astype(cfg.param_dtype), master)
    # Quantize from fp32 masters; the remaining (norm, bias, embedding) leaves are kept in bf16.
    quantized = quantize_params(master, fmt)
    return graphdef, jax.tree.map(lambda x: x if isinstance(x, QuantArray) else x.astype(jnp.bfloat16), quantized,
                                  is_leaf=lambda x: isinstance(x, QuantArray))


def weight_bytes(params) -> int:
    """Bytes of every array in `params` (quantized codes and their scales included)."""
    import jax  # noqa: PLC0415

    return sum(int(x.nbytes) for x in jax.tree.leaves(params))


def streamed_weight_bytes(params, tie_word_embeddings: bool) -> int:
    """Weight bytes one decode step reads: all but the input embedding table, which is only gathered.

    With tied embeddings the table is the lm_head, read whole every step, so it counts.
    """
    embed = 0 if tie_word_embeddings else weight_bytes(params["embed"])
    return weight_bytes(params) - embed


def jax_greedy_fn(graphdef, params, prompts, n_new: int):
    """A call running our sampler greedily on `prompts [B, P]` for `n_new` tokens; returns `[B, n_new]` numpy."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from jaxrl_llm.rollout import SamplingConfig, generate  # noqa: PLC0415

    lengths = np.full(len(prompts), prompts.shape[1])
    config = SamplingConfig(n_new, temperature=0.0)
    return lambda: np.asarray(generate(graphdef, params, prompts, lengths=lengths, key=jax.random.key(0),
                                       config=config).response)


def torch_greedy_fn(model, prompts, n_new: int):
    """A call running `model.generate` greedily for exactly `n_new` tokens; returns `[B, n_new]` numpy."""
    import torch  # noqa: PLC0415

    ids = torch.from_numpy(prompts.astype("int64"))
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new,
                                 min_new_tokens=n_new, eos_token_id=None, pad_token_id=0)
        return out[:, ids.shape[1]:].numpy()

    return run


def check_greedy_agreement(ours, theirs, reference: str = "torch fp32") -> int:
    """Raise naming the first differing token unless `ours` and `theirs` (`[B, N]`) are equal; returns B * N.

    `reference` names `theirs` in the message (e.g. "torch@2 fp32").
    """
    import numpy as np  # noqa: PLC0415

    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        raise RuntimeError(f"greedy tokens of JAX fp32 and {reference} differ in shape: {ours.shape} vs {theirs.shape}")
    rows, steps = np.nonzero(ours != theirs)
    if rows.size:
        r, s = int(rows[0]), int(steps[0])
        raise RuntimeError(f"greedy tokens of JAX fp32 and {reference} differ at {rows.size} of {ours.size} positions; "
                           f"first at row {r}, step {s}: jax {int(ours[r, s])} vs torch {int(theirs[r, s])}")
    return int(ours.size)


def decode_rates(full_times, prefill_times, batch: int, n_new: int, streamed_bytes: int) -> dict:
    """Medians of the full and prefill-only runs -> decode time, tokens/s and weight-streaming rate."""
    full, prefill = bench_common.median(full_times), bench_common.median(prefill_times)
    decode = max(full - prefill, 1e-9)  # a negative difference is noise on a loaded machine
    step = decode / (n_new - 1)
    return {
        "prefill_s": prefill,
        "total_s": full,
        "decode_s": decode,
        "decode_step_ms": 1e3 * step,
        "decode_tok_s": batch * (n_new - 1) / decode,
        "end_to_end_tok_s": batch * n_new / full,
        "weight_stream_gb_s": streamed_bytes / step / 1e9,
    }


def measure_bandwidth(nbytes: int, repeats: int, torch_threads: list[int]) -> tuple[float, str, dict]:
    """(bytes/s, where it came from, `{contender: bytes/s}`) of `y = x + 1` over `nbytes`.

    Contenders: "jax" and `torch@N` for each of `torch_threads` (none: JAX only).
    """
    fns = {"jax": bench_common.jax_stream_fn(nbytes)}
    if torch_threads:
        torch_stream = bench_common.torch_stream_fn(nbytes)
        for n in torch_threads:
            fns[bench_common.torch_label(n)] = bench_common.with_torch_threads(torch_stream, n)
    times = bench_common.interleaved_times(fns, repeats=repeats, warmup=1)
    rates = {k: bench_common.best_bandwidth(v, nbytes) for k, v in times.items()}
    best = max(rates, key=rates.get)
    source = f"best y = x + 1 pass over {nbytes / 2**20:.0f} MiB fp32 of {', '.join(rates)} ({best})"
    return rates[best], source, rates


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Time every format (and torch fp32 at each `--torch-threads` count, interleaved); the result dict for JSON."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from jaxrl_llm.models import Decoder  # noqa: PLC0415

    config = model_config(args)
    blocker = torch_blocker(config, 1, args.compare_torch)
    if blocker is None and jax.default_backend() != "cpu":
        blocker = f"JAX runs on {jax.default_backend()}; the torch reference runs on the CPU"
    if blocker is None and "fp32" not in args.formats:
        blocker = "fp32 is not among --formats (the torch reference is compared with our fp32 tokens)"
    if blocker is not None and args.compare_torch == "on":
        raise SystemExit(f"--compare-torch on, but {blocker}")
    counts = args.torch_threads if blocker is None else []
    load_at_start = bench_common.load_average()[0]
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    master = nnx.split(Decoder(config, rngs=nnx.Rngs(0)))[1]
    prompts = np.asarray(jax.random.randint(jax.random.key(1), (b, p), 0, config.vocab_size), np.int32)

    fns, streamed, sizes, compile_s, first_call_s, first_tokens = {}, {}, {}, {}, {}, {}
    for fmt in args.formats:
        graphdef, params = model_for(fmt, master, config)
        sizes[fmt], streamed[fmt] = weight_bytes(params), streamed_weight_bytes(params, config.tie_word_embeddings)
        fns[fmt] = jax_greedy_fn(graphdef, params, prompts, n)
        fns[f"{fmt}/prefill"] = jax_greedy_fn(graphdef, params, prompts, 1)
        compile_s[fmt] = bench_common.time_call(lambda f=fmt: first_tokens.__setitem__(f, fns[f]()))
        fns[f"{fmt}/prefill"]()
    torch_info: dict = {}
    torch_names = [bench_common.torch_label(t) for t in counts]
    if blocker is None:
        model = build_torch_model(config, nnx.to_pure_dict(master)).eval()
        for threads, name in zip(counts, torch_names):
            fns[name] = bench_common.with_torch_threads(torch_greedy_fn(model, prompts, n), threads)
            fns[f"{name}/prefill"] = bench_common.with_torch_threads(torch_greedy_fn(model, prompts, 1), threads)
            first_call_s[name] = bench_common.time_call(lambda k=name: first_tokens.__setitem__(k, fns[k]()))
            # Reduction order changes with the thread count; every setting must still decode our tokens.
            torch_info["greedy_tokens_compared"] = check_greedy_agreement(
                first_tokens["fp32"], first_tokens[name], reference=f"{name} fp32")
            streamed[name], sizes[name] = streamed["fp32"], sizes["fp32"]
        torch_info["torch_attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    times = bench_common.interleaved_times(fns, repeats=args.repeats, warmup=args.warmup)
    bandwidth, bandwidth_source, stream_rates = measure_bandwidth(args.stream_mb * 2**20, args.repeats, counts)

    rows = []
    for name in args.formats + torch_names:
        row = {"format": name if name in compile_s else f"{name} fp32", "weight_mb": sizes[name] / 2**20,
               "streamed_weight_mb": streamed[name] / 2**20,
               **({"compile_s": compile_s[name]} if name in compile_s else {}),
               **({"torch_threads": counts[torch_names.index(name)], "first_call_s": first_call_s[name]}
                  if name in first_call_s else {}),
               **decode_rates(times[name], times[f"{name}/prefill"], b, n, streamed[name])}
        row["bandwidth_fraction"] = row["weight_stream_gb_s"] * 1e9 / bandwidth
        rows.append(row)
    result = {
        **bench_common.run_metadata(argv),
        "load_average_1m_at_start": round(load_at_start, 2),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "preset": args.preset,
        "config": {k: getattr(config, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                                   "num_kv_heads", "head_dim", "vocab_size", "tie_word_embeddings")},
        "params": int(sum(x.size for x in jax.tree.leaves(master))),
        "batch": b, "prompt_len": p, "new_tokens": n, "repeats": args.repeats, "warmup": args.warmup,
        "timing": ("interleaved " + ("/".join(["jax formats"] + torch_names))
                   + ", full and prefill-only runs; decode = median(full) - median(prefill)"),
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_source": bandwidth_source,
        "jax_stream_gb_s": stream_rates["jax"] / 1e9,
        **({"torch_stream_gb_s": max(stream_rates[k] for k in torch_names) / 1e9} if torch_names else {}),
        "torch_compared": blocker is None,
        "torch_skipped_reason": blocker,
        "results": rows,
    }
    if blocker is not None:
        return result
    torch_rows = dict(zip(counts, rows[len(args.formats):]))
    best = min(counts, key=lambda t: torch_rows[t]["decode_s"])
    best_row = torch_rows[best]
    for row in rows:
        row["speedup_vs_torch"] = best_row["decode_s"] / row["decode_s"]
        row["end_to_end_speedup_vs_torch"] = best_row["total_s"] / row["total_s"]
    fp32 = rows[args.formats.index("fp32")]
    by_threads = {}
    for threads, name in zip(counts, torch_names):
        ratios = bench_common.paired_ratios(times[name], times["fp32"])
        t_row = torch_rows[threads]
        by_threads[str(threads)] = {
            "decode_s": t_row["decode_s"], "decode_tok_s": t_row["decode_tok_s"], "total_s": t_row["total_s"],
            "end_to_end_tok_s": t_row["end_to_end_tok_s"], "first_call_s": t_row["first_call_s"],
            "stream_gb_s": stream_rates[name] / 1e9,
            # Our fp32 against this setting.
            "speedup_vs_torch": t_row["decode_s"] / fp32["decode_s"],
            "end_to_end_speedup_vs_torch": t_row["total_s"] / fp32["total_s"],
            "end_to_end_speedup_paired_min": min(ratios),
            "end_to_end_speedup_paired_max": max(ratios),
        }
    chosen = by_threads[str(best)]
    result.update(torch_info)
    result.update({
        # The unsuffixed torch_* and speedup keys are those of the best thread count.
        "torch_threads": best,
        "torch_best_threads": best,
        "torch_thread_counts": counts,
        "torch_decoder": TORCH_DECODER,
        "greedy_tokens_agree": True,
        "torch_first_call_s": chosen["first_call_s"],
        "jax_fp32_decode_tok_s": fp32["decode_tok_s"],
        "torch_decode_tok_s": chosen["decode_tok_s"],
        **{k: chosen[k] for k in ("speedup_vs_torch", "end_to_end_speedup_vs_torch",
                                  "end_to_end_speedup_paired_min", "end_to_end_speedup_paired_max")},
        "torch_by_threads": by_threads,
    })
    return result


def result_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """`(header, rows)` of the summary table: one row per format, then one per torch thread count when compared."""
    torch = result["torch_compared"]
    vs = f"vs {bench_common.torch_label(result['torch_best_threads'])} fp32 (best)" if torch else ""
    header = ["format", "weights MB", "streamed MB", "prefill s", "decode ms/step", "decode tok/s", "e2e tok/s",
              "weight GB/s", "of mem BW"] + ([vs] if torch else [])
    rows = []
    for r in result["results"]:
        cells = [r["format"], f"{r['weight_mb']:.2f}", f"{r['streamed_weight_mb']:.2f}", f"{r['prefill_s']:.4f}",
                 f"{r['decode_step_ms']:.3f}", f"{r['decode_tok_s']:,.1f}", f"{r['end_to_end_tok_s']:,.1f}",
                 f"{r['weight_stream_gb_s']:.2f}", f"{100 * r['bandwidth_fraction']:.1f}%"]
        if torch:
            cells.append(f"{r['speedup_vs_torch']:.2f}x")
        rows.append(cells)
    return header, rows


def summary_lines(result: dict) -> list[str]:
    """The lines printed under the table: setup, bandwidth, the torch comparison (or why not)."""
    c = result["config"]
    lines = [f"model: {result['preset']} L={c['num_layers']} D={c['hidden_size']} F={c['intermediate_size']} "
             f"H={c['num_heads']} KVH={c['num_kv_heads']} Dh={c['head_dim']} V={c['vocab_size']} "
             f"({result['params']:,} params); batch={result['batch']} prompt={result['prompt_len']} "
             f"new={result['new_tokens']}; {result['device']}",
             f"memory bandwidth {result['memory_bandwidth_gb_s']:.2f} GB/s: {result['bandwidth_source']}"]
    if result["torch_compared"]:
        best = bench_common.torch_label(result["torch_best_threads"])
        counts = ", ".join(str(t) for t in result["torch_thread_counts"])
        lines.append(f"torch: {result['torch_decoder']}, timed at {counts} threads, "
                     f"attn={result['torch_attn_implementation']}; greedy tokens agree at every thread count "
                     f"({result['greedy_tokens_compared']} compared)")
        pairs = f"{result['end_to_end_speedup_paired_min']:.2f}-{result['end_to_end_speedup_paired_max']:.2f}"
        lines.append(f"speedup vs {best} (best; fp32 decode tok/s): {result['speedup_vs_torch']:.2f}x; end to end "
                     f"{result['end_to_end_speedup_vs_torch']:.2f}x (pairs {pairs})")
        for t in result["torch_thread_counts"]:
            d = result["torch_by_threads"][str(t)]
            lines.append(f"  vs {bench_common.torch_label(t)}: decode {d['speedup_vs_torch']:.2f}x, end to end "
                         f"{d['end_to_end_speedup_vs_torch']:.2f}x (pairs {d['end_to_end_speedup_paired_min']:.2f}-"
                         f"{d['end_to_end_speedup_paired_max']:.2f})")
    else:
        lines.append(f"torch: not run: {result['torch_skipped_reason']}")
    lines.append(f"{result['cpu']}, {result['cpu_cores']} cores, load {result['load_average_1m_at_start']} -> "
                 f"{result['load_average_1m_5m_15m'][0]}, {result['date_utc']}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    script = os.path.relpath(__file__) if argv is None else "tools/bench_decode.py"
    result = run(args, ["python", script] + list(sys.argv[1:] if argv is None else argv))
    table = bench_common.markdown_table if args.markdown else bench_common.format_table
    print(table(*result_rows(result)))
    print("\n".join(summary_lines(result)))
    if args.out is not None:
        bench_common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
