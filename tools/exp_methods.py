"""Experiment: every single-turn recipe against GRPO on the built-in task, several seeds, one CPU budget.

    python tools/exp_methods.py --out benchmarks/methods --seeds 0 1 2 --steps 20
    python tools/exp_methods.py --methods grpo dapo sdar --seeds 0 --steps 10     # a subset
    python tools/exp_methods.py --out benchmarks/methods --summarize-only         # re-read results.json

For each seed, one SFT warm-up (the quickstart's) is shared by every recipe whose model has the same
parameters (the critic recipe adds a value head and warms up on its own); OPD / AOPD distil from a
teacher trained once by the `sft` command to the end of its schedule and exported as a Hugging Face
checkpoint. Each recipe then runs `--steps` RL steps (`configs/<name>.py` with `--set` overrides);
held-out `eval/accuracy` (sampled) and greedy accuracy are taken at step 0, every `--eval-every`
steps and at the end. Reported per recipe (mean +- std over seeds): final accuracy, gain over the
same seed's GRPO run, response length, wall time, and the recipe's own diagnostic metric. Writes
`results.json` and `table.md` under `--out`, and `accuracy_vs_rollouts.png`.
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

# name -> (config, the paper's claim as tested here, diagnostic metric logged per step).
METHODS: dict[str, tuple[str, str, str]] = {
    "grpo": ("configs/quickstart.py", "baseline", "pg/clipfrac"),
    "dapo": ("configs/dapo.py", "dynamic sampling + clip-higher beat GRPO at equal steps", "dapo/rounds"),
    "drgrpo": ("configs/drgrpo.py", "matches GRPO accuracy without its length bias", "response_length"),
    "gspo": ("configs/gspo.py", "sequence ratios train as well as token ratios, more stably", "pg/clipfrac"),
    "rloo": ("configs/rloo.py", "leave-one-out baseline matches group normalisation", "pg/clipfrac"),
    "ppo": ("configs/ppo.py", "a learned critic with GAE matches a group baseline", "value/loss"),
    "sdar": ("configs/sdar.py", "gated self-distillation from a hinted teacher adds to GRPO", "sdar/gate_mean"),
    "opd": ("configs/opd.py", "distillation from a stronger teacher beats RL at equal rollouts", "distill/reverse_kl"),
    "aopd": ("configs/aopd.py", "asymmetric rule keeps OPD's gains with more entropy", "distill/frac_positive"),
    "tbpo": ("configs/tbpo.py", "int8 rollouts + aligned learner + TBPO match bf16 GRPO", "rollout/mismatch_abs_logp"),
    "rdpo": ("configs/rdpo.py", "decorrelated multi-reward advantages keep accuracy", "reward/eos"),
    "skillc": ("configs/skillc.py", "hint-contrastive credit helps hint-free accuracy", "reward/cond1"),
    "bcpg_nsa": ("configs/bcpg_nsa.py", "credit for correct steps of wrong answers helps", "pg/frac_flipped"),
}
TEACHER_STEPS = 1500  # the SFT quickstart's full schedule: a stronger model than the 450-step warm-up


def configure(path: str, overrides: dict[str, Any]):
    cfg = load_config_file(path)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def train_teacher(out: str) -> str:
    """The SFT quickstart trained to the end and exported as a Hugging Face checkpoint."""
    from jaxrl_llm.train.sft_run import run_sft

    hf_dir = os.path.join(out, "teacher_hf")
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        cfg = configure("configs/sft_tiny.py", {"output_dir": os.path.join(out, "teacher_run"),
                                                "export.hf_dir": hf_dir, "train.steps": TEACHER_STEPS,
                                                "train.progress_bar": False, "checkpoint.every": 0})
        summary = run_sft(cfg)
        print(f"teacher: greedy accuracy {summary.get('eval_accuracy')} after {TEACHER_STEPS} SFT steps", flush=True)
    return hf_dir


def run_one(name: str, seed: int, args, out: str, shared: dict, teacher: str | None) -> dict[str, Any]:
    path = METHODS[name][0]
    overrides = {"seed": seed, "rl.steps": args.steps, "eval.every": args.eval_every,
                 "output_dir": os.path.join(out, "runs", f"{name}_s{seed}"), "rl.progress_bar": False,
                 "checkpoint.every": 0, **dict(kv.split("=", 1) for kv in args.set)}
    if teacher is not None and load_config_file(path).rl.teacher.source.startswith("hf:"):
        overrides["rl.teacher.source"] = f"hf:{teacher}"
    cfg = configure(path, overrides)
    initial = None
    if not cfg.rl.critic.enabled:  # same parameter tree as the shared warm-up
        if seed not in shared:
            shared[seed] = initial_policy(cfg, warm_up=True)
        initial = shared[seed]
    t0 = time.perf_counter()
    summary = run_rl(cfg, initial=initial)
    records = summary["records"]
    metric = METHODS[name][2]
    values = [r[metric] for r in records if metric in r]
    rollouts = int(cfg.rl.prompts_per_step) * int(cfg.rl.samples_per_prompt)
    curve = [(0, summary["accuracy_before"])] + [(r["step"] * rollouts, r["eval/accuracy"]) for r in records
                                                 if "eval/accuracy" in r]
    return {"method": name, "seed": seed, "accuracy_before": summary["accuracy_before"],
            "final_accuracy": summary["accuracy_after"], "final_greedy_accuracy": summary["greedy_accuracy_after"],
            "response_length": float(np.mean([r["response_length"] for r in records])),
            "metric": metric, "metric_mean": float(np.mean(values)) if values else None,
            "wall_time_s": time.perf_counter() - t0, "curve": curve}


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    by_seed_grpo = {r["seed"]: r["final_accuracy"] for r in results if r["method"] == "grpo"}
    rows = []
    for name in [m for m in METHODS if any(r["method"] == m for r in results)]:
        runs = [r for r in results if r["method"] == name]
        gains = [r["final_accuracy"] - by_seed_grpo[r["seed"]] for r in runs if r["seed"] in by_seed_grpo]
        acc = [r["final_accuracy"] for r in runs]
        rows.append({"method": name, "claim": METHODS[name][1], "seeds": len(runs),
                     "accuracy_before": float(np.mean([r["accuracy_before"] for r in runs])),
                     "final_accuracy_mean": float(np.mean(acc)), "final_accuracy_std": float(np.std(acc)),
                     "final_greedy_mean": float(np.mean([r["final_greedy_accuracy"] for r in runs])),
                     "gain_vs_grpo_mean": float(np.mean(gains)) if gains else None,
                     "gain_vs_grpo_per_seed": gains, "response_length": float(np.mean([r["response_length"]
                                                                                       for r in runs])),
                     "metric": METHODS[name][2],
                     "metric_mean": (float(np.mean([r["metric_mean"] for r in runs if r["metric_mean"] is not None]))
                                     if any(r["metric_mean"] is not None for r in runs) else None),
                     "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs]))})
    return rows


CLAIMS_BETTER = ("dapo", "sdar", "opd", "aopd", "skillc", "bcpg_nsa")
NOISE = 0.01  # gains below one point of accuracy are within what a seed changes here


def verdict(row: dict[str, Any]) -> str:
    """Whether the runs show the claim's direction against the same seeds' GRPO runs.

    A claimed gain holds when the mean gain is at least `NOISE` and positive on most seeds; below
    `NOISE` it is "within noise". A claimed parity holds within 3 points of GRPO.
    """
    if row["method"] == "grpo" or row["gain_vs_grpo_mean"] is None:
        return "-"
    gains = np.asarray(row["gain_vs_grpo_per_seed"])
    if row["method"] in CLAIMS_BETTER:
        if abs(gains.mean()) < NOISE:
            return "within noise"
        return "holds" if gains.mean() >= NOISE and (gains > 0).sum() > len(gains) / 2 else "does not show"
    return "holds" if abs(gains.mean()) <= 0.03 else ("better" if gains.mean() > 0 else "does not hold")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | claim tested | seeds | acc before | final acc (mean +- std) | vs GRPO (points) | "
             "greedy | resp. len | diagnostic | result |", "|" + "---|" * 10]
    for r in rows:
        gain = "-" if r["gain_vs_grpo_mean"] is None or r["method"] == "grpo" else f"{100 * r['gain_vs_grpo_mean']:+.1f}"
        metric = "-" if r["metric_mean"] is None else f"{r['metric']} {r['metric_mean']:.3g}"
        lines.append(f"| {r['method']} | {r['claim']} | {r['seeds']} | {r['accuracy_before']:.3f} | "
                     f"{r['final_accuracy_mean']:.3f} +- {r['final_accuracy_std']:.3f} | {gain} | "
                     f"{r['final_greedy_mean']:.3f} | {r['response_length']:.2f} | {metric} | {verdict(r)} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(m for m in METHODS if any(r["method"] == m for r in results)):
        runs = [r for r in results if r["method"] == name]
        xs = [n for n, _ in runs[0]["curve"]]
        mean = np.mean([[a for _, a in r["curve"]] for r in runs], axis=0)
        ax.plot(xs, mean, color=cmap(i), lw=2.4 if name == "grpo" else 1.4, label=name, marker="o", ms=3)
    ax.set_xlabel("rollouts (sampled responses)")
    ax.set_ylabel("held-out accuracy (sampled, mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/exp_methods")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--set", action="append", default=[], help="an override for every run, e.g. rl.prompts_per_step=64")
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results: list[dict] = []
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)["runs"]
    if not args.summarize_only:
        methods = ["grpo"] + [m for m in args.methods if m != "grpo"]
        needs_teacher = any(load_config_file(METHODS[m][0]).rl.teacher.source.startswith("hf:") for m in methods)
        teacher = train_teacher(args.out) if needs_teacher else None
        done = {(r["method"], r["seed"]) for r in results}
        for seed in args.seeds:
            shared: dict = {}
            for name in methods:
                if (name, seed) in done:
                    continue
                result = run_one(name, seed, args, args.out, shared, teacher)
                results.append(result)
                print(f"{name} seed {seed}: {result['accuracy_before']:.3f} -> {result['final_accuracy']:.3f} "
                      f"({result['wall_time_s']:.0f} s)", flush=True)
                with open(path, "w") as f:  # after every run: an interrupted sweep resumes where it stopped
                    json.dump({"args": vars(args), "runs": results}, f, indent=1)
    rows = summarize(results)
    table = markdown_table(rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if results:
        plot(results, os.path.join(args.out, "accuracy_vs_rollouts.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
