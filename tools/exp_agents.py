"""Experiment: GRPO against each agent method on TextHouse and TextShop, several seeds (a benchmark).

    python tools/exp_agents.py --out benchmarks/agents --seeds 0 1 2 --steps 20
    python tools/exp_agents.py --env textshop --methods agents_grpo agents_d2skill --seeds 0
    python tools/exp_agents.py --out benchmarks/agents --summarize-only

The sweep is `tools/exp_methods.py`'s (one SFT warm-up per seed shared by every method whose model,
data and warm-up agree; results.json written after every run, so an interrupted sweep resumes), run on
the agent recipes `configs/agents_house_*.py` with `data.task_kwargs.env=--env`. On top of its table,
this prints per method (mean over seeds): held-out skill-free success (sampled at
agent.eval_temperature and greedy), success with skills where the method has them, turns per episode
and the invalid-action rate of the greedy episodes, and writes `agents.md` / `agents.json` /
`agents.png` under `--out/<env>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exp_methods  # noqa: E402  (the sweep driver this one runs)

AGENT_METHODS = [m for m in exp_methods.METHODS if m.startswith("agents_")]
COLUMNS = (("eval/accuracy", "success"), ("eval/greedy_accuracy", "greedy success"),
           ("eval/success_with_skills", "with skills"), ("eval/greedy_turns_per_episode", "turns"),
           ("eval/greedy_invalid_rate", "invalid rate"))


def agent_rows(results: list[dict]) -> list[dict]:
    """Per method: the mean and std over seeds of each COLUMNS metric at the last evaluation."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        row = {"method": method, "seeds": len(runs)}
        for key, name in COLUMNS:
            values = [r.get("final_eval", {}).get(key) for r in runs]
            values = [v for v in values if v is not None]
            row[name] = (float(np.mean(values)), float(np.std(values))) if values else None
        row["success_before"] = float(np.mean([r["accuracy_before"] for r in runs]))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ["method", "seeds", "success before"] + [n for _, n in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["seeds"]), f"{r['success_before']:.3f}"]
        cells += ["-" if r[n] is None else f"{r[n][0]:.3f} +- {r[n][1]:.3f}" for _, n in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in results):
        curves = [np.asarray(r["curve"]) for r in results if r["method"] == method]
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n, 1] for c in curves], axis=0)
        ax.plot(curves[0][:n, 0], mean, marker="o", label=method)
    ax.set_xlabel("episodes played")
    ax.set_ylabel("held-out success (skill-free)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/exp_agents")
    p.add_argument("--env", default="texthouse", help="data.task_kwargs.env of every run")
    p.add_argument("--methods", nargs="+", default=AGENT_METHODS, choices=AGENT_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    out = os.path.join(args.out, args.env)
    forwarded = ["--out", out, "--methods", *args.methods, "--seeds", *map(str, args.seeds), "--steps",
                 str(args.steps), "--eval-every", str(args.eval_every), "--set", f"data.task_kwargs.env={args.env}"]
    forwarded += [x for kv in args.set for x in ("--set", kv)]
    exp_methods.main(forwarded + (["--summarize-only"] if args.summarize_only else []))
    with open(os.path.join(out, "results.json")) as f:
        results = [r for r in json.load(f)["runs"] if r["method"] in args.methods]
    rows = agent_rows(results)
    text = table(rows)
    with open(os.path.join(out, "agents.md"), "w") as f:
        f.write(f"env: {args.env}\n\n{text}\n")
    with open(os.path.join(out, "agents.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if results:
        plot(results, os.path.join(out, "agents.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
