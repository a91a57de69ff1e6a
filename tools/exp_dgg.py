"""Experiment: does DGG-gated sample reuse save rollouts? Single-use vs naive reuse vs DGG reuse.

    python tools/exp_dgg.py --out runs/exp_dgg
    python tools/exp_dgg.py --seeds 0 1 2 --steps 30 --eval-every 5 --target-gain 0.05 --set rl.dgg.tau=0.5
    python tools/exp_dgg.py --out runs/exp_dgg --summarize-only --target-gain 0.02  # re-read results.json
    # the degrading regime next to the quickstart's, one process per seed, then one summary:
    python tools/exp_dgg.py --out runs/d/s0 --seeds 0 --steps 12 --eval-every 4 \
        --regimes k8_mb4_lr1e3 base --variants single naive dgg dgg_tau1 --set rl.prompts_per_step=64
    python tools/exp_dgg.py --out runs/d --merge runs/d/s0/results.json runs/d/s1/results.json

For each seed, one SFT warm-up (from `--config`, default `configs/quickstart.py`) is shared by
the RL runs of every `--regimes` x `--variants` pair on the built-in arithmetic task (`REGIMES`:
`base` is `--config` as is, `k8_mb4_lr1e3` the one where naive reuse collapses: K = 8, 4
minibatches, learning rate 1e-3). Variants (`VARIANTS`):

- `single`: K = 1 (each rollout batch used once), no gate;
- `naive`: K passes, no gate;
- `dgg`: K passes behind the recommended gate (configs/dgg.py: statistic `energy_ratio`, tau 0.5,
  window 20); `dgg_tau1`, `dgg_dwd`, `dgg_delta` (the quickstart's gate) for comparison.

Each run also keeps the per-step trace of the gate and the divergence diagnostics (`TRACE_KEYS`),
plotted against rollouts in `statistic_vs_rollouts.png`.

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
    # The recommended gate (configs/dgg.py): head-gradient energy ratio to the batch's first pass.
    "dgg": {"rl.dgg.enabled": True, "rl.dgg.statistic": "energy_ratio", "rl.dgg.tau": 0.5, "rl.dgg.window": 20},
    "dgg_tau1": {"rl.dgg.enabled": True, "rl.dgg.statistic": "energy_ratio", "rl.dgg.tau": 1.0, "rl.dgg.window": 20},
    "dgg_dwd": {"rl.dgg.enabled": True, "rl.dgg.statistic": "dwd", "rl.dgg.tau": 1.0, "rl.dgg.window": 20},
    # The gate as first shipped (z of the energy increment, tau = 1; the quickstart's setting).
    "dgg_delta": {"rl.dgg.enabled": True, "rl.dgg.statistic": "delta", "rl.dgg.tau": 1.0, "rl.dgg.window": 20},
}

# Reuse regimes on top of `--config` (`--regimes`): the quickstart's, and harder ones where reusing a
# batch many times with a large step can over-fit it.
REGIMES: dict[str, dict[str, Any]] = {
    "base": {},
    "k8_mb4": {"rl.reuse_epochs": 8, "rl.minibatches": 4},
    "k8_lr1e3": {"rl.reuse_epochs": 8, "rl.optimizer.learning_rate": 1e-3},
    "k8_mb4_lr1e3": {"rl.reuse_epochs": 8, "rl.minibatches": 4, "rl.optimizer.learning_rate": 1e-3},
    "k8_mb4_lr3e3": {"rl.reuse_epochs": 8, "rl.minibatches": 4, "rl.optimizer.learning_rate": 3e-3},
}

# Per-step values kept in each run's `trace` (the gate's and the divergence diagnostics' history).
TRACE_KEYS = ("accuracy", "pg/kl", "pg/clipfrac", "gate/events", "gate/z_max", "gate/stat_max", "gate/lmhead_energy",
              "reuse/steps_applied", "dwd/head_rel_update", "dwd/inner_rel_update", "dwd/ratio",
              "dwd/ratio_first", "dwd/ratio_reuse_max", "dwd/energy_ratio_max", "dwd/energy_ratio_last")


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
    for i, (variant, runs) in enumerate(results.items()):
        color = f"C{i % 10}"
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


def plot_statistic(results: dict[str, list[dict]], path: str) -> str:
    """Per variant (mean over seeds) vs rollouts: the head-gradient energy ratio g_k / g_1 (max over
    a batch's reuse passes), the head / inner relative-change ratio, and applied optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("dwd/energy_ratio_max", "max_k g_k / g_1 (head grad energy)", True),
              ("dwd/ratio_reuse_max", "max_k head / inner rel. change", True),
              ("reuse/steps_applied", "optimizer steps applied per batch", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for i, (variant, runs) in enumerate(results.items()):
        for ax, (key, label, log) in zip(axes, panels):
            rows = [[np.nan if v is None else float(v) for v in run["trace"][key]] for run in runs]
            if not rows or np.all(np.isnan(rows)) or (log and np.nanmax(rows) <= 0):
                continue
            mean = np.nanmean(np.array(rows), axis=0)
            xs = runs[0]["rollouts_per_step"] * (np.arange(len(mean)) + 1)
            ax.plot(xs, mean, color=f"C{i % 10}", lw=1.6, label=variant)
            ax.set_ylabel(label)
            ax.set_yscale("log" if log else "linear")
    for ax in axes:
        ax.set_xlabel("rollouts (sampled responses)")
        ax.grid(alpha=0.3)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[-1].legend(fontsize=7, loc="best")
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
    p.add_argument("--reuse", type=int, default=4, help="K for the naive and DGG variants (a regime may set its own)")
    p.add_argument("--regimes", nargs="+", default=["base"], choices=sorted(REGIMES),
                   help="reuse regimes to run (results keyed regime/variant unless only `base`)")
    p.add_argument("--variants", nargs="+", default=["single", "naive", "dgg"], choices=sorted(VARIANTS))
    p.add_argument("--target", type=float, default=None, help="absolute accuracy to reach (overrides --target-gain)")
    p.add_argument("--target-gain", type=float, default=0.03,
                   help="target = each seed's accuracy before RL + this gain")
    p.add_argument("--summarize-only", action="store_true", help="re-summarize <out>/results.json, no training")
    p.add_argument("--merge", nargs="+", default=[], metavar="RESULTS_JSON",
                   help="summarize these results.json files (e.g. one per seed, run side by side) into --out")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra config override for every run, e.g. rl.dgg.tau=1.0")
    return p.parse_args(argv)


def run_all(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Warm up once per seed and run every variant from it; returns per-variant run records."""
    extra = dict(item.split("=", 1) for item in args.set)
    runs = [(regime, variant) for regime in args.regimes for variant in args.variants]
    name = {(r, v): v if args.regimes == ["base"] else f"{r}/{v}" for r, v in runs}
    results: dict[str, list[dict]] = {name[key]: [] for key in runs}
    for seed in args.seeds:
        base = {"seed": seed, "rl.steps": args.steps, "rl.reuse_epochs": args.reuse, "eval.every": args.eval_every,
                "eval.num_problems": args.eval_problems, "rl.progress_bar": False, "checkpoint.every": 0,
                **extra, "output_dir": os.path.join(args.out, f"seed{seed}")}
        cfg = configure(args.config, base)
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        initial = initial_policy(cfg, warm_up=True)
        for regime, variant in runs:
            # single use keeps the regime's step size and minibatches, only K = 1
            overrides = {**REGIMES[regime], **VARIANTS[variant]}
            run_cfg = configure(args.config, {**base, **overrides, "output_dir": os.path.join(
                args.out, f"seed{seed}", name[regime, variant].replace("/", "_"))})
            summary = run_rl(run_cfg, initial=initial)
            per_step = int(run_cfg.rl.prompts_per_step) * int(run_cfg.rl.samples_per_prompt)
            records = summary["records"]
            results[name[regime, variant]].append({
                "seed": seed,
                "accuracy_before": summary["accuracy_before"],
                "final_accuracy": summary["accuracy_after"],
                "final_greedy_accuracy": summary["greedy_accuracy_after"],
                "curve": eval_curve(records, summary["accuracy_before"], per_step),
                "optimizer_steps": sum(r["reuse/steps_applied"] for r in records),
                "gate_events": sum(r["gate/events"] for r in records),
                "wall_time_s": summary["wall_time_s"],
                "trace": {k: [r.get(k) for r in records] for k in TRACE_KEYS},
                "rollouts_per_step": per_step,
            })
            print(f"seed {seed} {name[regime, variant]}: accuracy {summary['accuracy_before']:.3f} -> "
                  f"{summary['accuracy_after']:.3f}", flush=True)
    return results


def merge_results(paths: list[str]) -> dict[str, list[dict]]:
    """Runs of several `results.json` files, concatenated per variant (in the order given)."""
    merged: dict[str, list[dict]] = {}
    for path in paths:
        with open(path) as f:
            for variant, runs in json.load(f)["runs"].items():
                merged.setdefault(variant, []).extend(runs)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    if args.merge:
        results, run_args = merge_results(args.merge), {"merged": args.merge}
    elif args.summarize_only:
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
    if all("trace" in run for runs in results.values() for run in runs):
        plot_statistic(results, os.path.join(args.out, "statistic_vs_rollouts.png"))
    print(f"target: {rule}\n{table}\nwrote {args.out}/results.json, table.md, {os.path.basename(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
