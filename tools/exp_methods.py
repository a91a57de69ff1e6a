"""Experiment: every single-turn recipe against GRPO on the built-in task, several seeds, one CPU budget.

    python tools/exp_methods.py --out benchmarks/methods --seeds 0 1 2 --steps 20
    python tools/exp_methods.py --methods grpo dapo sdar --seeds 0 --steps 10     # a subset
    python tools/exp_methods.py --out benchmarks/methods --summarize-only         # re-read results.json
    python tools/exp_methods.py --methods sdar_chain opsd_chain skillc_chain --steps 20   # vs grpo_chain
    python tools/exp_methods.py --methods dpo_vp --steps 10 --eval-every 1                # equal budgets

For each seed, one SFT warm-up (the quickstart's) is shared by every recipe whose model has the same
parameters (the critic recipe adds a value head and warms up on its own); OPD / AOPD distil from a
teacher trained once by the `sft` command to the end of its schedule and exported as a Hugging Face
checkpoint. Each recipe then runs `--steps` RL steps (`configs/<name>.py` with `--set` overrides);
held-out `eval/accuracy` (sampled) and greedy accuracy are taken at step 0, every `--eval-every`
steps and at the end. Reported per recipe (mean +- std over seeds): final accuracy, gain over the
same seed's GRPO run, response length, wall time, and the recipe's own diagnostic metric. Writes
`results.json` and `table.md` under `--out`, and `accuracy_vs_rollouts.png`.

Each recipe is compared with its baseline (`BASELINES`, default `grpo`): the `*_chain` recipes run on
ArithChain from a warm-up that also reads hinted prompts, against `grpo_chain` from the same warm-up.
`dpo_vp` runs the `dpo_vp` command from the GRPO warm-up (same seed, same held-out problems) and is
compared on greedy accuracy at equal sampled responses and equal training wall time (`budget_rows`,
`budget.md`); GRPO's curve is interpolated linearly between its evaluation points.
"""

from __future__ import annotations

import argparse
import copy
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
    "grpo_chain": ("configs/grpo_chain.py", "baseline on ArithChain (hint-reading warm-up)", "pg/clipfrac"),
    "sdar_chain": ("configs/sdar_chain.py", "gated self-distillation from a first-step hint adds to GRPO",
                   "sdar/gate_mean"),
    "opsd_chain": ("configs/opsd_chain.py", "naive GRPO + OPSD (SDAR without its gate) is worse than SDAR",
                   "sdar/gate_mean"),
    "skillc_chain": ("configs/skillc_chain.py", "hint-contrastive credit helps hint-free accuracy", "reward/cond1"),
    "dpo_vp": ("configs/dpo_vp.py", "iterative DPO on verified pairs matches GRPO at equal rollouts",
               "round/pairs"),
    # Multi-turn agents on TextHouse (tools/exp_agents.py runs these; --set data.task_kwargs.env=textshop).
    "agents_grpo": ("configs/agents_house_grpo.py", "baseline (ReAct-style GRPO over turns)", "invalid_rate"),
    "agents_skillc": ("configs/agents_house_skillc.py", "skill-free success >= GRPO's (skills internalised)",
                      "skillc/injected_frac"),
    "agents_sdar": ("configs/agents_house_sdar.py", "gated privileged-skill distillation >= GRPO", "sdar/gate_mean"),
    "agents_d2skill": ("configs/agents_house_d2skill.py", "skill-free success >= GRPO's with a reflected bank",
                       "d2skill/step_pool_size"),
}
# The run each recipe is compared with, same seed (default "grpo").
BASELINES = {"grpo_chain": "grpo_chain", "sdar_chain": "grpo_chain", "opsd_chain": "grpo_chain",
             "skillc_chain": "grpo_chain", "agents_grpo": "agents_grpo", "agents_skillc": "agents_grpo",
             "agents_sdar": "agents_grpo",
             "agents_d2skill": "agents_grpo"}


def baseline_of(name: str) -> str:
    return BASELINES.get(name, "grpo")
TEACHER_STEPS = 1500  # the SFT quickstart's full schedule: a stronger model than the 450-step warm-up


_LOADED: dict[str, Any] = {}  # each config file is read once per sweep: edits to it mid-sweep do not split warm-ups


def configure(path: str, overrides: dict[str, Any]):
    if path not in _LOADED:
        _LOADED[path] = load_config_file(path)
    cfg = copy.deepcopy(_LOADED[path])
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


def warmup_key(cfg) -> str:
    """What the SFT warm-up depends on (model, data, sft sections but logging, seed): runs with equal keys
    share it."""
    sft = cfg.sft.to_dict()
    sft["train"] = {k: v for k, v in sft["train"].items() if k not in ("progress_bar", "log_every")}
    return json.dumps({"seed": int(cfg.seed), "model": cfg.model.to_dict(), "data": cfg.data.to_dict(),
                       "sft": sft}, sort_keys=True, default=str)


def shared_policy(cfg, shared: dict):
    key = warmup_key(cfg)
    if key not in shared:
        shared[key] = initial_policy(cfg, warm_up=True)
    return shared[key]


def eval_curves(records: list[dict], rollouts_per_step: int, before: dict) -> dict[str, list]:
    """Held-out accuracy against rollouts and training wall time, one point per evaluation.

    `train_time_s` sums `step_time_s - eval/time_s` (evaluation excluded, the first step's compile
    included). before: `{"accuracy", "greedy"}` at step 0. Returns `curve` [(rollouts, sampled)],
    `greedy_curve` [(rollouts, greedy)] and `time_curve` [(train_time_s, greedy)].
    """
    curve, greedy, timed, elapsed = [(0, before["accuracy"])], [(0, before["greedy"])], [(0.0, before["greedy"])], 0.0
    for r in records:
        elapsed += r.get("step_time_s", 0.0) - r.get("eval/time_s", 0.0)
        if "eval/accuracy" in r:
            curve.append((r["step"] * rollouts_per_step, r["eval/accuracy"]))
            greedy.append((r["step"] * rollouts_per_step, r["eval/greedy_accuracy"]))
            timed.append((elapsed, r["eval/greedy_accuracy"]))
    return {"curve": curve, "greedy_curve": greedy, "time_curve": timed}


def run_dpo_vp_one(seed: int, args, out: str, shared: dict) -> dict[str, Any]:
    """The `dpo_vp` command from the GRPO warm-up of this seed; greedy accuracy per round."""
    from jaxrl_llm.train.dpo_vp import run_dpo_vp

    cfg = load_config_file(METHODS["dpo_vp"][0])
    # Most --set overrides name RL fields; only those the dpo_vp config has apply (listed in the result).
    sets = dict(kv.split("=", 1) for kv in args.set)
    skipped = sorted(k for k in sets if not _has_field(cfg, k))
    cfg = configure(METHODS["dpo_vp"][0], {"seed": seed, "output_dir": os.path.join(out, "runs", f"dpo_vp_s{seed}"),
                                           "dpo.progress_bar": False, "sft.train.progress_bar": False,
                                           **{k: v for k, v in sets.items() if k not in skipped}})
    grpo = rl_config("grpo", seed, args, out)
    if warmup_key(cfg) != warmup_key(grpo):
        raise ValueError("the dpo_vp run would not start from the GRPO run's warm-up (model, data or sft sections "
                         "differ between configs/dpo_vp.py and configs/quickstart.py with these --set overrides)")
    initial = shared_policy(grpo, shared)
    t0 = time.perf_counter()
    summary = run_dpo_vp(cfg, initial=initial)
    rounds = summary["rounds"]
    before = summary["greedy_accuracy_before"]
    samples = np.cumsum([r["samples"] for r in rounds]).tolist()
    times = np.cumsum([r["time_s"] for r in rounds]).tolist()
    return {"method": "dpo_vp", "seed": seed, "eval": "greedy", "accuracy_before": before,
            "final_accuracy": summary["greedy_accuracy_after"],
            "final_greedy_accuracy": summary["greedy_accuracy_after"],
            "response_length": None, "metric": "round/pairs",
            "metric_mean": float(np.mean([r["pairs"] for r in rounds])), "wall_time_s": time.perf_counter() - t0,
            "rollouts": int(samples[-1]), "train_time_s": float(times[-1]), "skipped_overrides": skipped,
            "curve": [(0, before)] + [(n, r["greedy_accuracy"]) for n, r in zip(samples, rounds)],
            "greedy_curve": [(0, before)] + [(n, r["greedy_accuracy"]) for n, r in zip(samples, rounds)],
            "time_curve": [(0.0, before)] + [(t, r["greedy_accuracy"]) for t, r in zip(times, rounds)]}


def _has_field(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


DPO_VP_SECTIONS = ("dpo.", "dpo_vp.")  # --set fields of the dpo_vp recipe only; RL configs have neither


def rl_config(name: str, seed: int, args, out: str, teacher: str | None = None):
    """`configs/<name>.py` with the run's seed, steps, evaluation, output dir and `--set` overrides."""
    path = METHODS[name][0]
    sets = {k: v for k, v in (kv.split("=", 1) for kv in args.set) if not k.startswith(DPO_VP_SECTIONS)}
    overrides = {"seed": seed, "rl.steps": args.steps, "eval.every": args.eval_every,
                 "output_dir": os.path.join(out, "runs", f"{name}_s{seed}"), "rl.progress_bar": False,
                 "checkpoint.every": 0, **sets}
    if teacher is not None and load_config_file(path).rl.teacher.source.startswith("hf:"):
        overrides["rl.teacher.source"] = f"hf:{teacher}"
    return configure(path, overrides)


def run_one(name: str, seed: int, args, out: str, shared: dict, teacher: str | None) -> dict[str, Any]:
    if name == "dpo_vp":
        return run_dpo_vp_one(seed, args, out, shared)
    cfg = rl_config(name, seed, args, out, teacher)
    initial = None
    if not cfg.rl.critic.enabled:  # same parameter tree as the shared warm-up
        initial = shared_policy(cfg, shared)
    t0 = time.perf_counter()
    summary = run_rl(cfg, initial=initial)
    records = summary["records"]
    metric = METHODS[name][2]
    values = [r[metric] for r in records if metric in r]
    rollouts = int(cfg.rl.prompts_per_step) * int(cfg.rl.samples_per_prompt)
    curves = eval_curves(records, rollouts, {"accuracy": summary["accuracy_before"],
                                             "greedy": summary["greedy_accuracy_before"]})
    return {"method": name, "seed": seed, "accuracy_before": summary["accuracy_before"],
            "final_accuracy": summary["accuracy_after"], "final_greedy_accuracy": summary["greedy_accuracy_after"],
            "response_length": float(np.mean([r["response_length"] for r in records])),
            "metric": metric, "metric_mean": float(np.mean(values)) if values else None,
            "wall_time_s": time.perf_counter() - t0, **curves,
            # the last held-out evaluation's every eval/ metric (per-type success, turns, skills for agents)
            "final_eval": next(({k: v for k, v in r.items() if k.startswith("eval/")}
                                for r in reversed(records) if "eval/accuracy" in r), {})}


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    """Per recipe: accuracy over seeds and gains against the same seed's baseline run (`BASELINES`;
    greedy accuracy for recipes evaluated greedily only, e.g. dpo_vp)."""
    base = {(r["method"], r["seed"]): r for r in results}

    def gain(r):
        b = base.get((baseline_of(r["method"]), r["seed"]))
        key = "final_greedy_accuracy" if r.get("eval") == "greedy" else "final_accuracy"
        return None if b is None else r[key] - b[key]

    rows = []
    for name in [m for m in METHODS if any(r["method"] == m for r in results)]:
        runs = [r for r in results if r["method"] == name]
        gains = [g for g in map(gain, runs) if g is not None]
        acc = [r["final_accuracy"] for r in runs]
        rows.append({"method": name, "claim": METHODS[name][1], "seeds": len(runs),
                     "accuracy_before": float(np.mean([r["accuracy_before"] for r in runs])),
                     "final_accuracy_mean": float(np.mean(acc)), "final_accuracy_std": float(np.std(acc)),
                     "final_greedy_mean": float(np.mean([r["final_greedy_accuracy"] for r in runs])),
                     "gain_vs_grpo_mean": float(np.mean(gains)) if gains else None,
                     "gain_vs_grpo_per_seed": gains, "baseline": baseline_of(name),
                     "eval": runs[0].get("eval", "sampled"),
                     "response_length": (float(np.mean([r["response_length"] for r in runs]))
                                         if runs[0]["response_length"] is not None else None),
                     "metric": METHODS[name][2],
                     "metric_mean": (float(np.mean([r["metric_mean"] for r in runs if r["metric_mean"] is not None]))
                                     if any(r["metric_mean"] is not None for r in runs) else None),
                     "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs]))})
    return rows


CLAIMS_BETTER = ("dapo", "sdar", "opd", "aopd", "skillc", "bcpg_nsa", "sdar_chain", "skillc_chain")
CLAIMS_WORSE = ("opsd_chain",)  # SDAR's motivation: without the gate the teacher's rejections hurt
BUDGET_METHODS = ("dpo_vp",)  # compared at equal rollouts / wall time (`budget_rows`), not at equal steps
NOISE = 0.01  # gains below one point of accuracy are within what a seed changes here


def verdict(row: dict[str, Any]) -> str:
    """Whether the runs show the claim's direction against the same seeds' GRPO runs.

    A claimed gain holds when the mean gain is at least `NOISE` and positive on most seeds; below
    `NOISE` it is "within noise". A claimed parity holds within 3 points of GRPO.
    """
    if row["method"] == baseline_of(row["method"]) or row["gain_vs_grpo_mean"] is None:
        return "-"
    if row["method"] in BUDGET_METHODS:
        return "see the budget table"
    gains = np.asarray(row["gain_vs_grpo_per_seed"])
    if row["method"] in CLAIMS_WORSE:
        if abs(gains.mean()) < NOISE:
            return "within noise"
        return "holds" if gains.mean() <= -NOISE and (gains < 0).sum() > len(gains) / 2 else "does not show"
    if row["method"] in CLAIMS_BETTER:
        if abs(gains.mean()) < NOISE:
            return "within noise"
        return "holds" if gains.mean() >= NOISE and (gains > 0).sum() > len(gains) / 2 else "does not show"
    return "holds" if abs(gains.mean()) <= 0.03 else ("better" if gains.mean() > 0 else "does not hold")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | claim tested | seeds | acc before | final acc (mean +- std) | vs GRPO (points) | "
             "greedy | resp. len | diagnostic | result |", "|" + "---|" * 10]
    for r in rows:
        gain = ("-" if r["gain_vs_grpo_mean"] is None or r["method"] == baseline_of(r["method"])
                else f"{100 * r['gain_vs_grpo_mean']:+.1f}")
        length = "-" if r["response_length"] is None else f"{r['response_length']:.2f}"
        metric = "-" if r["metric_mean"] is None else f"{r['metric']} {r['metric_mean']:.3g}"
        lines.append(f"| {r['method']} | {r['claim']} | {r['seeds']} | {r['accuracy_before']:.3f} | "
                     f"{r['final_accuracy_mean']:.3f} +- {r['final_accuracy_std']:.3f} | {gain} | "
                     f"{r['final_greedy_mean']:.3f} | {length} | {metric} | {verdict(r)} |")
    return "\n".join(lines)


def at_budget(curve: list, x: float) -> float | None:
    """Accuracy on a `[(budget, accuracy)]` curve at budget `x`, linearly interpolated between the two
    evaluation points around it; None beyond the last point (never extrapolated)."""
    xs, ys = np.asarray([c[0] for c in curve], float), np.asarray([c[1] for c in curve], float)
    if x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def budget_rows(results: list[dict], baseline: str = "grpo") -> list[dict[str, Any]]:
    """Per `BUDGET_METHODS` run: its final greedy accuracy against the same seed's baseline run at the
    same number of sampled responses and at the same training wall time (`at_budget`)."""
    base = {r["seed"]: r for r in results if r["method"] == baseline}
    rows = []
    for r in (r for r in results if r["method"] in BUDGET_METHODS and r["seed"] in base):
        b = base[r["seed"]]
        at_n, at_t = at_budget(b["greedy_curve"], r["rollouts"]), at_budget(b["time_curve"], r["train_time_s"])
        rows.append({"method": r["method"], "seed": r["seed"], "greedy_before": r["accuracy_before"],
                     "greedy_after": r["final_greedy_accuracy"], "rollouts": r["rollouts"],
                     "train_time_s": r["train_time_s"], "baseline_at_rollouts": at_n, "baseline_at_time": at_t,
                     "baseline_final": b["final_greedy_accuracy"], "baseline_rollouts": b["greedy_curve"][-1][0],
                     "baseline_train_time_s": b["time_curve"][-1][0],
                     "gain_at_rollouts": None if at_n is None else r["final_greedy_accuracy"] - at_n,
                     "gain_at_time": None if at_t is None else r["final_greedy_accuracy"] - at_t})
    return rows


def budget_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    lines = [("| method | seed | greedy before | greedy after | rollouts | train s | GRPO at equal rollouts | "
              "GRPO at equal time | vs GRPO, equal rollouts | vs GRPO, equal time | GRPO final (rollouts, s) |"),
             "|" + "---|" * 11]
    for r in rows:
        g_n = "-" if r["gain_at_rollouts"] is None else f"{100 * r['gain_at_rollouts']:+.1f}"
        g_t = "-" if r["gain_at_time"] is None else f"{100 * r['gain_at_time']:+.1f}"
        lines.append(f"| {r['method']} | {r['seed']} | {fmt(r['greedy_before'])} | {fmt(r['greedy_after'])} | "
                     f"{r['rollouts']} | {r['train_time_s']:.1f} | {fmt(r['baseline_at_rollouts'])} | "
                     f"{fmt(r['baseline_at_time'])} | {g_n} | {g_t} | {fmt(r['baseline_final'])} "
                     f"({r['baseline_rollouts']}, {r['baseline_train_time_s']:.1f}) |")
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
        label = f"{name} (greedy)" if runs[0].get("eval") == "greedy" else name
        ax.plot(xs, mean, color=cmap(i), lw=2.4 if name == baseline_of(name) else 1.4, label=label, marker="o", ms=3)
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
        baselines = list(dict.fromkeys(baseline_of(m) for m in args.methods))
        methods = baselines + [m for m in args.methods if m not in baselines]
        needs_teacher = any(load_config_file(METHODS[m][0]).get("rl", {}).get("teacher", {}).get("source", "")
                            .startswith("hf:") for m in methods)
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
    budget = budget_rows(results)
    if budget:
        with open(os.path.join(args.out, "budget.md"), "w") as f:
            f.write(budget_table(budget) + "\n")
        with open(os.path.join(args.out, "budget.json"), "w") as f:
            json.dump(budget, f, indent=1)
        print(budget_table(budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
