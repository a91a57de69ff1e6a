"""Experiment: does DGG-gated sample reuse save rollouts? Single-use vs naive reuse vs DGG reuse.

    python tools/exp_dgg.py --out runs/exp_dgg
    python tools/exp_dgg.py --seeds 0 1 2 --steps 30 --eval-every 5 --target-gain 0.05 --set rl.dgg.tau=0.5
    python tools/exp_dgg.py --out runs/exp_dgg --summarize-only --target-gain 0.02  # re-read results.json

For each seed, one SFT warm-up (from `--config`, default `configs/quickstart.py`) is shared by
three RL runs on the built-in arithmetic task:

- `single`: K = 1 (each rollout batch used once), no gate;
- `naive`: K = `--reuse` passes, no gate;
- `dgg`: K = `--reuse` passes with the DGG gate (stops reuse on an lm_head gradient spike).

Reported per variant (mean over seeds, and per seed): rollouts (sampled responses) needed for the
held-out accuracy (`eval/accuracy`: mean reward of sampled answers) to first reach the target
(that seed's accuracy before RL + `--target-gain`, or the absolute `--target`; None when never
reached), final accuracy (and greedy accuracy), optimizer steps applied and gate events. Writes
`results.json`, `table.md` and `accuracy_vs_rollouts.png` under `--out` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import numpy as np

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.rl import initial_policy, run_rl

VARIANTS: dict[str, dict[str, Any]] = {
    "single": {"rl.reuse_epochs": 1, "rl.dgg.enabled": False},
    "naive": {"rl.dgg.enabled": False},
    "dgg": {"rl.dgg.enabled": True},
}


def configure(path: str, overrides: dict[str, Any]):
    cfg = load_config_file(path)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def eval_curve(records: list[dict], accuracy_before: float, rollouts_per_step: int) -> list[tuple[int, float]]:
    """`[(rollouts sampled so far, held-out accuracy)]`, starting at (0, accuracy before RL)."""
    curve = [(0, float(accuracy_before))]
    curve += [(r["step"] * rollouts_per_step, float(r["eval/accuracy"])) for r in records if "eval/accuracy" in r]
    return curve


def rollouts_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """Rollouts at the first evaluation whose accuracy is >= `target` (None if none is)."""
    return next((n for n, acc in curve if acc >= target), None)


def summarize(results: dict[str, list[dict]]) -> list[dict[str, Any]]:
    rows = []
    for variant, runs in results.items():
        hits = [r["rollouts_to_target"] for r in runs]
        reached = [h for h in hits if h is not None]
        rows.append({
            "variant": variant,
            "seeds_reaching_target": f"{len(reached)}/{len(runs)}",
            "mean_rollouts_to_target": float(np.mean(reached)) if reached else None,
            "per_seed_rollouts_to_target": hits,
            "final_accuracy_mean": float(np.mean([r["final_accuracy"] for r in runs])),
            "final_accuracy_std": float(np.std([r["final_accuracy"] for r in runs])),
            "final_greedy_accuracy_mean": float(np.mean([r["final_greedy_accuracy"] for r in runs])),
            "accuracy_before_mean": float(np.mean([r["accuracy_before"] for r in runs])),
            "optimizer_steps_mean": float(np.mean([r["optimizer_steps"] for r in runs])),
            "gate_events_mean": float(np.mean([r["gate_events"] for r in runs])),
        })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | seeds at target | rollouts to target (mean) | final acc (mean +- std) | acc before | "
            "final greedy acc | optimizer steps | gate events |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        to_target = "never" if r["mean_rollouts_to_target"] is None else f"{r['mean_rollouts_to_target']:.0f}"
        lines.append(f"| {r['variant']} | {r['seeds_reaching_target']} | {to_target} | "
                     f"{r['final_accuracy_mean']:.3f} +- {r['final_accuracy_std']:.3f} | "
                     f"{r['accuracy_before_mean']:.3f} | {r['final_greedy_accuracy_mean']:.3f} | "
                     f"{r['optimizer_steps_mean']:.1f} | {r['gate_events_mean']:.1f} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (variant, runs) in zip(("tab:gray", "tab:orange", "tab:blue"), results.items()):
        for i, run in enumerate(runs):
            xs, ys = zip(*run["curve"])
            ax.plot(xs, ys, color=color, alpha=0.35, lw=1)
        xs = [n for n, _ in runs[0]["curve"]]
        mean = np.mean([[a for _, a in run["curve"]] for run in runs], axis=0)
        ax.plot(xs, mean, color=color, lw=2.2, label=f"{variant} (mean of {len(runs)})")
    ax.set_xlabel("rollouts (sampled responses)")
    ax.set_ylabel("held-out accuracy (sampled)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.py")
    p.add_argument("--out", default="runs/exp_dgg")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30, help="RL steps per run")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--reuse", type=int, default=4, help="K for the naive and DGG variants")
    p.add_argument("--target", type=float, default=None, help="absolute accuracy to reach (overrides --target-gain)")
    p.add_argument("--target-gain", type=float, default=0.03,
                   help="target = each seed's accuracy before RL + this gain")
    p.add_argument("--summarize-only", action="store_true", help="re-summarize <out>/results.json, no training")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra config override for every run, e.g. rl.dgg.tau=1.0")
    return p.parse_args(argv)


def run_all(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Warm up once per seed and run every variant from it; returns per-variant run records."""
    extra = dict(item.split("=", 1) for item in args.set)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        base = {"seed": seed, "rl.steps": args.steps, "rl.reuse_epochs": args.reuse, "eval.every": args.eval_every,
                "eval.num_problems": args.eval_problems, "rl.progress_bar": False, "checkpoint.every": 0,
                **extra, "output_dir": os.path.join(args.out, f"seed{seed}")}
        cfg = configure(args.config, base)
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        initial = initial_policy(cfg, warm_up=True)
        for variant, overrides in VARIANTS.items():
            run_cfg = configure(args.config, {**base, **overrides,
                                              "output_dir": os.path.join(args.out, f"seed{seed}", variant)})
            summary = run_rl(run_cfg, initial=initial)
            per_step = int(run_cfg.rl.prompts_per_step) * int(run_cfg.rl.samples_per_prompt)
            records = summary["records"]
            results[variant].append({
                "seed": seed,
                "accuracy_before": summary["accuracy_before"],
                "final_accuracy": summary["accuracy_after"],
                "final_greedy_accuracy": summary["greedy_accuracy_after"],
                "curve": eval_curve(records, summary["accuracy_before"], per_step),
                "optimizer_steps": sum(r["reuse/steps_applied"] for r in records),
                "gate_events": sum(r["gate/events"] for r in records),
                "wall_time_s": summary["wall_time_s"],
            })
            print(f"seed {seed} {variant}: accuracy {summary['accuracy_before']:.3f} -> "
                  f"{summary['accuracy_after']:.3f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    if args.summarize_only:
        with open(path) as f:
            saved = json.load(f)
        results, run_args = saved["runs"], saved["run_args"]
    else:
        results, run_args = run_all(args), vars(args)
    for runs in results.values():
        for run in runs:
            run["target"] = args.target if args.target is not None else run["accuracy_before"] + args.target_gain
            run["rollouts_to_target"] = rollouts_to_target(run["curve"], run["target"])
    rows = summarize(results)
    table = markdown_table(rows)
    rule = f"absolute {args.target}" if args.target is not None else f"accuracy before RL + {args.target_gain}"
    with open(path, "w") as f:
        json.dump({"run_args": run_args, "target_rule": rule, "summary": rows, "runs": results}, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(f"target: {rule}\n\n{table}\n")
    png = plot(results, os.path.join(args.out, "accuracy_vs_rollouts.png"))
    print(f"target: {rule}\n{table}\nwrote {args.out}/results.json, table.md, {os.path.basename(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
