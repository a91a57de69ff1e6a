"""Experiment: QaRL / TBPO with int4 and int8 rollouts on long ArithChain responses.

    python tools/exp_qarl_chain.py --out benchmarks/methods/qarl_chain --seeds 0 1 2 --steps 10
    python tools/exp_qarl_chain.py --variants full ...          # the whole grid (9 variants)
    python tools/exp_qarl_chain.py --warmup-from runs/sft_chain ...   # restore the warm-up instead of training it
    python tools/exp_qarl_chain.py --out DIR --summarize-only

Variants (all `configs/qarl_chain.py` with overrides): the fp32 GRPO reference, and int8 / int4
rollouts x {naive learner (`rl.qarl=false`), aligned learner (`rl.qarl=true`)} x {grpo, tbpo}.
One SFT warm-up (seed `--warmup-seed`) is shared by every variant and every RL seed: the RL seed
draws the prompts and sampling keys, so seeds differ in RL only. Per variant (mean +- std over
seeds): held-out `eval/accuracy` before and after RL (sampled at the rollout's precision, i.e. the
policy that is served), `rollout/mismatch_abs_logp` (mean over steps and its maximum),
`rollout/error_token_rate` (mean over steps and last step), `eval/error_token_rate` and
`eval/garbled_frac` at the end. Writes `results.json` and `table.md` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.metrics import read_jsonl
from jaxrl_llm.train.rl import initial_policy, run_rl, sft_warmup_config
from jaxrl_llm.train.sft_run import setup_sft

CONFIG = "configs/qarl_chain.py"
_FP32 = {"rl.rollout_quant": "", "rl.qarl": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32_grpo": {**_FP32, "rl.objective": "grpo"},
    **{f"{fmt}_{learner}_{obj}": {"rl.rollout_quant": fmt, "rl.qarl": learner == "aligned", "rl.objective": obj}
       for fmt in ("int8", "int4") for learner in ("naive", "aligned") for obj in ("grpo", "tbpo")},
}
SUBSET = ["fp32_grpo", "int4_naive_grpo", "int4_aligned_grpo", "int4_aligned_tbpo", "int8_aligned_tbpo"]


def configure(overrides: dict[str, Any]):
    cfg = load_config_file(CONFIG)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def restore_warmup(cfg, directory: str) -> tuple:
    """`initial_policy`'s tuple from the newest checkpoint of an SFT run of this config's model."""
    setup = setup_sft(sft_warmup_config(cfg))
    checkpointer = Checkpointer(os.path.join(directory, "checkpoints"))
    state = checkpointer.restore(setup.state)
    checkpointer.close()
    return setup.mesh, setup.parts, state.params, setup.rest, jax.tree.map(lambda x: x.sharding, state.params)


def run_one(name: str, seed: int, args, initial: tuple) -> dict[str, Any]:
    overrides = {**VARIANTS[name], "seed": seed, "rl.steps": args.steps, "eval.every": args.eval_every,
                 "output_dir": os.path.join(args.out, "runs", f"{name}_s{seed}"), "rl.progress_bar": False,
                 "checkpoint.every": 0, **dict(kv.split("=", 1) for kv in args.set)}
    t0 = time.perf_counter()
    summary = run_rl(configure(overrides), initial=initial)
    records = [r for r in summary["records"] if "loss" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    last = evals[-1] if evals else {}
    first = next((r for r in read_jsonl(os.path.join(summary["run_dir"], "metrics.jsonl")) if r["step"] == 0), {})

    def series(key):
        return [float(r[key]) for r in records if key in r]

    mismatch, errors = series("rollout/mismatch_abs_logp"), series("rollout/error_token_rate")
    return {"variant": name, "seed": seed, "steps": summary["steps"],
            "acc_before": summary.get("accuracy_before"), "acc_after": summary.get("accuracy_after"),
            "greedy_after": summary.get("greedy_accuracy_after"),
            "train_accuracy": series("accuracy"),
            "mismatch_mean": float(np.mean(mismatch)), "mismatch_max": float(np.max(mismatch)),
            "mismatch": mismatch, "error_rate_mean": float(np.mean(errors)), "error_rate_last": errors[-1],
            "error_rate": errors, "eval_error_before": first.get("eval/error_token_rate"),
            "eval_error_rate": last.get("eval/error_token_rate"),
            "eval_garbled_frac": last.get("eval/garbled_frac"), "response_length": series("response_length"),
            "wall_s": time.perf_counter() - t0}


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for name in VARIANTS:
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        row = {"variant": name, "seeds": len(runs)}
        for key in ("acc_before", "acc_after", "greedy_after", "mismatch_mean", "mismatch_max", "error_rate_mean",
                    "error_rate_last", "eval_error_before", "eval_error_rate", "eval_garbled_frac", "wall_s"):
            values = [r[key] for r in runs if r.get(key) is not None]
            row[key] = (float(np.mean(values)), float(np.std(values))) if values else None
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v, digits=3):
        return "-" if v is None else f"{v[0]:.{digits}f} +- {v[1]:.{digits}f}"

    header = ("| variant | seeds | eval acc before | eval acc after | greedy after | mismatch (mean / max) "
              "| error-token rate rollout (mean / last) | eval error-token rate before -> after | eval garbled frac "
              "| wall s |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seeds']} | {fmt(r['acc_before'])} | {fmt(r['acc_after'])} | "
                     f"{fmt(r['greedy_after'])} | {fmt(r['mismatch_mean'], 4)} / {fmt(r['mismatch_max'], 4)} | "
                     f"{fmt(r['error_rate_mean'])} / {fmt(r['error_rate_last'])} | "
                     f"{fmt(r.get('eval_error_before'))} -> {fmt(r['eval_error_rate'])} | "
                     f"{fmt(r['eval_garbled_frac'])} | {fmt(r['wall_s'], 0)} |")
    return "\n".join(lines) + "\n"


def write(out: str, results: list[dict], meta: dict) -> list[dict]:
    rows = summarize(results)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": results, "summary": rows}, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(markdown_table(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/exp_qarl_chain")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0, help="0: only before and after RL")
    p.add_argument("--variants", nargs="+", default=SUBSET, help=f"names, or 'full'; known: {', '.join(VARIANTS)}")
    p.add_argument("--warmup-seed", type=int, default=0)
    p.add_argument("--warmup-from", default="", help="an SFT run directory of this config's model to restore")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override in every run")
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    variants = list(VARIANTS) if args.variants == ["full"] else args.variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)} or 'full'")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    if args.summarize_only:
        with open(path) as f:
            saved = json.load(f)
        print(markdown_table(write(args.out, saved["runs"], saved["meta"])))
        return 0
    meta = {"argv": sys.argv, "variants": variants, "seeds": args.seeds, "steps": args.steps,
            "warmup_seed": args.warmup_seed, "warmup_from": args.warmup_from, "set": args.set}
    base = configure({"seed": args.warmup_seed, "output_dir": os.path.join(args.out, "warmup"),
                      **dict(kv.split("=", 1) for kv in args.set)})
    t0 = time.perf_counter()
    initial = restore_warmup(base, args.warmup_from) if args.warmup_from else initial_policy(base, warm_up=True)
    meta["warmup_s"] = time.perf_counter() - t0
    results = []
    for seed in args.seeds:
        for name in variants:
            result = run_one(name, seed, args, initial)
            results.append(result)
            print(f"{name} seed {seed}: acc {result['acc_before']:.3f} -> {result['acc_after']:.3f}, mismatch "
                  f"{result['mismatch_mean']:.4f}, error-token rate {result['error_rate_mean']:.3f} "
                  f"(eval {result['eval_error_rate']}), {result['wall_s']:.0f} s", flush=True)
            write(args.out, results, meta)  # partial results survive an interrupted run
    print(markdown_table(write(args.out, results, meta)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
