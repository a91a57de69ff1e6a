"""Experiment: LANG vs LC-GRPO vs mGRPO on the multilingual number-word task, LC&Acc per resource group.

    python tools/exp_lang.py --out benchmarks/methods/lang_runs --seeds 0 1 2 --steps 15
    python tools/exp_lang.py --out /tmp/lang --summarize-only          # re-read results.json

Variants (all `configs/lang.py`, the same warm-up):
- `lang`: in-language hints (cosine decay, per-group switch) + conjunctive reward R_lc * R_format * R_acc;
- `lc_grpo`: the same conjunctive reward, no hints;
- `mgrpo`: accuracy-only reward (`rl.scorers=('lang_acc',)`), no hints.
Every run is evaluated on the same unhinted held-out set: `eval/lang/<group>/lc_acc` (answer correct
and the response in the question's language; sampled at the rollout temperature) and its greedy
counterpart. One SFT warm-up per `--warmup-seeds` entry (default: one, seed 0, shared by every RL
seed: the RL seed then changes the prompts, the sampling keys and the held-out set). Writes
`results.json` and `table.md` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.rl import initial_policy, run_rl

CONFIG = "configs/lang.py"
VARIANTS: dict[str, dict[str, Any]] = {
    "lang": {},
    "lc_grpo": {"rl.hints.enabled": False},
    "mgrpo": {"rl.hints.enabled": False, "rl.scorers": "('lang_acc',)"},
}
GROUPS = ("high", "mid", "low", "all")
KEYS = ("lc_acc", "lc", "acc", "format")


def configure(overrides: dict[str, Any]):
    cfg = load_config_file(CONFIG)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def eval_slice(record: dict, prefix: str) -> dict[str, float]:
    """`{"<group>/<key>": value}` of one evaluation record (`prefix` = "eval/" or "eval/greedy/")."""
    return {f"{g}/{k}": record[f"{prefix}lang/{g}/{k}"] for g in GROUPS for k in KEYS
            if f"{prefix}lang/{g}/{k}" in record}


def run_one(variant: str, seed: int, args, initial) -> dict[str, Any]:
    sets = dict(kv.split("=", 1) for kv in args.set)
    cfg = configure({**VARIANTS[variant], "seed": seed, "rl.steps": args.steps, "eval.every": args.eval_every,
                     "output_dir": os.path.join(args.out, "runs", f"{variant}_s{seed}"), "rl.progress_bar": False,
                     "sft.train.progress_bar": False, "checkpoint.every": 0, **sets})
    t0 = time.perf_counter()
    summary = run_rl(cfg, initial=initial)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    evals = [r for r in lines if "eval/accuracy" in r]
    hints = {k: v for k, v in lines[-1].items() if k.startswith("hints/off/")}
    switched = {g: next((r["step"] for r in lines if r.get(f"hints/off/{g}", 0.0) > 0), None)
                for g in ("high", "mid", "low")}
    return {"variant": variant, "seed": seed, "steps": int(cfg.rl.steps),
            "before": eval_slice(evals[0], "eval/"), "after": eval_slice(evals[-1], "eval/"),
            "greedy_before": eval_slice(evals[0], "eval/greedy/"), "greedy_after": eval_slice(evals[-1], "eval/greedy/"),
            "accuracy_before": summary["accuracy_before"], "accuracy_after": summary["accuracy_after"],
            "final_hints_off": hints, "switch_step": switched if variant == "lang" else None,
            "train_reward_mean": float(np.mean([r["reward/mean"] for r in lines if "reward/mean" in r])),
            "wall_time_s": time.perf_counter() - t0}


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"


def table(results: list[dict]) -> str:
    """Markdown: per variant, LC&Acc per group after RL (sampled, and greedy), mean +- std over seeds."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    head = ("| variant | seeds | " + " | ".join(f"LC&Acc {g}" for g in GROUPS) + " | greedy LC&Acc low | "
            "greedy LC&Acc all | LC low | Acc low |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    first = [r for r in results if r["variant"] == variants[0]]
    lines.append("| before RL | " + str(len(first)) + " | "
                 + " | ".join(mean_std([r["before"][f"{g}/lc_acc"] for r in first]) for g in GROUPS) + " | "
                 + mean_std([r["greedy_before"]["low/lc_acc"] for r in first]) + " | "
                 + mean_std([r["greedy_before"]["all/lc_acc"] for r in first]) + " | "
                 + mean_std([r["before"]["low/lc"] for r in first]) + " | "
                 + mean_std([r["before"]["low/acc"] for r in first]) + " |")
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        lines.append(f"| {v} | {len(rs)} | "
                     + " | ".join(mean_std([r["after"][f"{g}/lc_acc"] for r in rs]) for g in GROUPS) + " | "
                     + mean_std([r["greedy_after"]["low/lc_acc"] for r in rs]) + " | "
                     + mean_std([r["greedy_after"]["all/lc_acc"] for r in rs]) + " | "
                     + mean_std([r["after"]["low/lc"] for r in rs]) + " | "
                     + mean_std([r["after"]["low/acc"] for r in rs]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/exp_lang")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--warmup-seeds", type=int, nargs="+", default=[0],
                   help="one warm-up per entry; RL seed i uses entry i mod len (default: one shared warm-up)")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE override for every run")
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    if args.summarize_only:
        with open(path) as f:
            results = json.load(f)["results"]
    else:
        sets = dict(kv.split("=", 1) for kv in args.set)
        results, warmups, t0 = [], {}, time.perf_counter()
        for i, seed in enumerate(args.seeds):
            ws = args.warmup_seeds[i % len(args.warmup_seeds)]
            if ws not in warmups:
                cfg = configure({"seed": ws, "output_dir": os.path.join(args.out, "runs", f"warmup_s{ws}"),
                                 "sft.train.progress_bar": False, **sets})
                w0 = time.perf_counter()
                warmups[ws] = initial_policy(cfg, warm_up=True)
                print(f"warm-up seed {ws}: {time.perf_counter() - w0:.0f} s", flush=True)
            for variant in args.variants:
                result = run_one(variant, seed, args, warmups[ws])
                result["warmup_seed"] = ws
                results.append(result)
                print(json.dumps({k: result[k] for k in ("variant", "seed", "after", "wall_time_s")}), flush=True)
                with open(path, "w") as f:
                    json.dump({"args": vars(args), "results": results}, f, indent=1)
        print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    text = table(results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
