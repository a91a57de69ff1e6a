"""Experiment: offline BCPG-NSA vs BCPG (no NSA) vs RFT on the same fixed dataset, several seeds.

    python tools/exp_bcpg_offline.py --out runs/exp_bcpg_offline --seeds 0 1 2
    python tools/exp_bcpg_offline.py --out runs/exp_bcpg_offline --seeds 0 --set rl.steps=2   # smaller
    python tools/exp_bcpg_offline.py --out runs/exp_bcpg_offline --summarize-only            # re-read results.json
    python tools/exp_bcpg_offline.py --out runs/exp_bcpg_offline --merge runs/e/s0 runs/e/s1  # seeds run apart
    # one process trains and saves the warm-up, others wait for it and train the other variants:
    python tools/exp_bcpg_offline.py --out runs/e/nsa0 --seeds 0 --variants bcpg_nsa --warmup-dir runs/e/w --train-warmup
    python tools/exp_bcpg_offline.py --out runs/e/rft0 --seeds 0 --variants rft --warmup-dir runs/e/w
    # BCPG-NSA with the PRM head as the second step judge (train it first: configs/prm_arith_chain.py):
    python tools/exp_bcpg_offline.py --out runs/e/prm0 --seeds 0 --variants bcpg_nsa --warmup-dir runs/e/w \
        --config configs/bcpg_offline_prm.py --set rl.step_labels.prm_path=runs/prm_arith_chain

For each seed: one SFT warm-up (configs/bcpg_offline.py), one dataset sampled from it and
written to `<out>/data_s<seed>.jsonl`, then the three variants (`rl.offline.variant` = bcpg_nsa,
bcpg, rft) each train `rl.steps` epochs over that file from the same warm-up. Reported per
variant (mean +- std over seeds): held-out sampled and greedy accuracy and step accuracy (share
of correct steps in the policy's own sampled responses) after training, their change from the
warm-up, the share of negative tokens flipped, and the dataset's statistics. Writes
`results.json` (every run, with its per-epoch evaluations) and `table.md` under `--out`.
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
from jaxrl_llm.train.builders import build_policy
from jaxrl_llm.train.rl import (
    _restore_reference,
    _save_reference,
    initial_policy,
    policy_model_section,
)
from jaxrl_llm.train.rl_offline import OFFLINE_VARIANTS, run_offline_rl

CONFIG = "configs/bcpg_offline.py"  # the default of --config
METRICS = (("accuracy", "sampled acc"), ("greedy_accuracy", "greedy acc"), ("step_accuracy", "step acc"),
           ("greedy_step_accuracy", "greedy step acc"))


def configure(seed: int, variant: str, args, out: str):
    cfg = load_config_file(args.config)
    overrides = {"seed": seed, "rl.offline.variant": variant, "rl.progress_bar": False,
                 "sft.train.progress_bar": False, "output_dir": os.path.join(out, "runs", f"{variant}_s{seed}"),
                 "rl.offline.dataset_path": os.path.join(args.data_dir or out, f"data_s{seed}.jsonl"),
                 **dict(kv.split("=", 1) for kv in args.set)}
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def warm_policy(seed: int, args, out: str):
    """The seed's SFT warm-up: trained here, or (with `--warmup-dir`) read from there once the
    process that trains it has saved it, so the variants can run as separate processes."""
    cfg = configure(seed, OFFLINE_VARIANTS[0], args, out)
    if not args.warmup_dir:
        return initial_policy(cfg, warm_up=True)
    path = os.path.abspath(os.path.join(args.warmup_dir, f"warmup_s{seed}"))
    if not args.train_warmup:
        while not os.path.exists(path + ".done"):
            time.sleep(10)
        mesh, parts, params, rest, shardings = build_policy(cfg, model_cfg=policy_model_section(cfg))
        return mesh, parts, _restore_reference(path, params), rest, shardings
    warm = initial_policy(cfg, warm_up=True)
    _save_reference(path, warm[2])
    open(path + ".done", "w").close()
    return warm


def run_seed(seed: int, args, out: str) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    warm = warm_policy(seed, args, out)
    print(f"seed {seed}: warm-up {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for variant in args.variants:
        t1 = time.perf_counter()
        summary = run_offline_rl(configure(seed, variant, args, out), initial=warm)
        evals = [{k: v for k, v in r.items() if k.startswith("eval/") or k == "step"}
                 for r in summary["records"] if "eval/accuracy" in r]
        flipped = [r["pg/frac_flipped"] for r in summary["records"] if "pg/frac_flipped" in r]
        row = {"variant": variant, "seed": seed, "wall_time_s": time.perf_counter() - t1, "evals": evals,
               "frac_flipped": float(np.mean(flipped)) if flipped else 0.0,
               **{k: v for k, v in summary.items() if k.startswith("dataset/")}}
        for stem, _ in METRICS:
            row[f"{stem}_before"], row[f"{stem}_after"] = summary.get(f"{stem}_before"), summary.get(f"{stem}_after")
        rows.append(row)
        print(f"seed {seed} {variant}: " + ", ".join(f"{label} {row[f'{stem}_before']:.3f} -> {row[f'{stem}_after']:.3f}"
                                                     for stem, label in METRICS) + f" ({row['wall_time_s']:.0f} s)",
              flush=True)
    return rows


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    out = []
    for variant in OFFLINE_VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant, "seeds": len(runs)}
        for stem, _ in METRICS:
            after = [r[f"{stem}_after"] for r in runs]
            delta = [r[f"{stem}_after"] - r[f"{stem}_before"] for r in runs]
            row.update({f"{stem}_mean": float(np.mean(after)), f"{stem}_std": float(np.std(after)),
                        f"{stem}_delta": float(np.mean(delta)), f"{stem}_before": float(np.mean([r[f"{stem}_before"]
                                                                                                 for r in runs]))})
        row["frac_flipped"] = float(np.mean([r["frac_flipped"] for r in runs]))
        out.append(row)
    return out


def table(rows: list[dict], results: list[dict]) -> str:
    head = "| variant | seeds | " + " | ".join(f"{label} (before -> after, mean +- std)" for _, label in METRICS)
    lines = [head + " | negative tokens flipped |", "|" + "---|" * (3 + len(METRICS))]
    for r in rows:
        cells = [f"{r[f'{s}_before']:.3f} -> {r[f'{s}_mean']:.3f} +- {r[f'{s}_std']:.3f} ({100 * r[f'{s}_delta']:+.1f})"
                 for s, _ in METRICS]
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + f" | {r['frac_flipped']:.3f} |")
    seeds = sorted({r["seed"] for r in results})
    header = ("| seed | dataset accuracy | mixed groups | step acc (all) | step acc (negatives) | "
              "negative tokens in correct steps |")
    lines += ["", header, "|---|---|---|---|---|---|"]
    for s in seeds:
        d = next(r for r in results if r["seed"] == s)
        lines.append(f"| {s} | {d['dataset/accuracy']:.3f} | {d['dataset/mixed_groups']:.3f} | "
                     f"{d['dataset/step_accuracy']:.3f} | {d['dataset/negative_step_accuracy']:.3f} | "
                     f"{d['dataset/frac_flipped']:.3f} |")
    lines += ["", "Per seed (sampled acc / step acc after training):", "",
              "| seed | " + " | ".join(OFFLINE_VARIANTS) + " |", "|---|" + "---|" * len(OFFLINE_VARIANTS)]
    for s in seeds:
        by = {r["variant"]: r for r in results if r["seed"] == s}
        lines.append(f"| {s} | " + " | ".join(f"{by[v]['accuracy_after']:.3f} / {by[v]['step_accuracy_after']:.3f}"
                                              if v in by else "-" for v in OFFLINE_VARIANTS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/exp_bcpg_offline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default=CONFIG, help="the offline recipe every variant starts from")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    p.add_argument("--variants", nargs="+", default=list(OFFLINE_VARIANTS), choices=OFFLINE_VARIANTS)
    p.add_argument("--warmup-dir", default="", help="share each seed's warm-up between processes through this folder")
    p.add_argument("--train-warmup", action="store_true", help="with --warmup-dir: this process trains and saves it")
    p.add_argument("--data-dir", default="", help="folder of the datasets data_s<seed>.jsonl (default --out)")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                   help="summarize the runs of these --out directories (seeds run as separate processes) into --out")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    if args.summarize_only or args.merge:
        results = []
        for d in args.merge or [args.out]:
            with open(os.path.join(d, "results.json")) as f:
                results += json.load(f)["runs"]
    else:
        results = []
        for seed in args.seeds:
            results += run_seed(seed, args, args.out)
            with open(path, "w") as f:  # after every seed: a cut-short experiment keeps what ran
                json.dump({"config": args.config, "set": args.set, "runs": results}, f, indent=1)
    rows = summarize(results)
    text = table(rows, results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(path, "w") as f:
        json.dump({"config": args.config, "set": args.set, "summary": rows, "runs": results}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
