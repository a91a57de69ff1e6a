"""Benchmark: HeavySkill's answer vs best-of-N vs majority vote at equal samples, on ArithChain.

    python tools/exp_heavyskill.py                       # 3 seeds, writes benchmarks/heavyskill.json + .png
    python tools/exp_heavyskill.py --seeds 0 --rl-steps 4 --sft-steps 150 --problems 60   # a quick look

Setup (`configs/heavyskill.py`): the tiny decoder gets one SFT warm-up on 3-operand 1-digit chains, half
of its records in the deliberation layout (`data.task = "heavyskill"`: 8 synthetic candidates, a random
share correct, the others with one carried slip; target = the correct worked solution). The warm-up
is shared by the seeds; each seed then runs GRPO on HeavySkill deliberations for `--rl-steps` steps
(its own prompts and sampling keys).

Evaluation on held-out problems (before and after RL, at temperature 1), N = K + summary_k = 12
samples per problem for every method:
- `heavyskill`: K = 8 solutions (the first 8 of the problem's 12 plain samples) -> trimmed cache ->
  summary_k = 4 deliberations -> majority of the deliberations' answers;
- `best_of_n`: the one of the 12 plain samples with the highest mean token log-prob under the policy
  (no verifier);
- `majority`: majority vote over the 12 plain samples' answers;
- `pass@1` (mean plain sample accuracy), `deliberation@1` (mean deliberation accuracy) and
  `pass@K` of the 8 solutions (the ceiling a deliberation reading them could reach by copying).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxrl_llm.agents.heavyskill import (deliberation_problems, heavyskill_aggregate, heavyskill_settings,
                                         solution_answer)
from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.envs.math_answer import answers_match
from jaxrl_llm.train.builders import build_tokenizer, task_from_config
from jaxrl_llm.train.eval_run import eval_key, majority_vote
from jaxrl_llm.train.rl import initial_policy, run_rl, sampling_config
from jaxrl_llm.train.rl_rollout import decode_responses, encode_prompts, sample_responses

CONFIG = "configs/heavyskill.py"
METHODS = ("heavyskill", "best_of_n", "majority", "pass@1", "deliberation@1", "pass@K")


def configure(overrides: dict[str, Any]):
    cfg = load_config_file(CONFIG)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def is_right(task: Any, problem: Any, text: str) -> float:
    return float(np.all(np.asarray(task.score(problem, text), np.float64) >= 1.0))


def heavyskill_eval(cfg: Any, parts: Any, params: Any, rest: Any, problems: list, key: jax.Array,
                    batch: int = 50) -> dict[str, float]:
    """The six METHODS' accuracies on `problems` (module docstring), `batch` problems per sampler call."""
    task, tok = task_from_config(cfg.data), build_tokenizer(cfg.data)
    heavy = heavyskill_settings(cfg)
    k, m = heavy.num_solutions, heavy.summary_k
    n = k + m
    base = sampling_config(cfg, tok)
    scores = {name: [] for name in METHODS}
    for c, start in enumerate(range(0, len(problems), batch)):
        chunk = problems[start:start + batch]
        plain = sample_responses(parts, params, rest, encode_prompts(tok, chunk), key=jax.random.fold_in(key, 2 * c),
                                 config=dataclasses.replace(base, n=n))
        texts = decode_responses(tok, plain)
        lengths = np.asarray(plain.lengths)
        mean_logp = np.asarray(plain.logprobs).sum(1) / np.maximum(lengths, 1)
        rows = np.arange(len(chunk))[:, None] * n + np.arange(k)[None, :]  # the K solutions of each problem
        delib, _ = deliberation_problems(task, tok, chunk, np.asarray(plain.response)[rows.reshape(-1)],
                                         lengths[rows.reshape(-1)], num_solutions=k, context=heavy.context,
                                         reserve=heavy.reserve)
        cfg_d = dataclasses.replace(base, n=m, prompt_bucket=heavy.width)
        drawn = sample_responses(parts, params, rest, encode_prompts(tok, delib), key=jax.random.fold_in(key, 2 * c + 1),
                                 config=cfg_d)
        delib_texts = decode_responses(tok, drawn)
        for i, problem in enumerate(chunk):
            samples = texts[i * n:(i + 1) * n]
            right = [is_right(task, problem, t) for t in samples]
            answers = [solution_answer(task, t) for t in samples]
            d_texts = delib_texts[i * m:(i + 1) * m]
            result = heavyskill_aggregate([solution_answer(task, t) for t in d_texts], answers[:k], problem.reference)
            scores["heavyskill"].append(float(result.correct))
            scores["pass@K"].append(result.pass_at_k)
            scores["best_of_n"].append(right[int(np.argmax(mean_logp[i * n:(i + 1) * n]))])
            scores["majority"].append(majority_vote(answers, lambda a, p=problem: answers_match(a, p.reference)))
            scores["pass@1"].append(float(np.mean(right)))
            scores["deliberation@1"].append(float(np.mean([is_right(task, problem, t) for t in d_texts])))
    return {name: float(np.mean(v)) for name, v in scores.items()}


def plot(path: str, rows: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    x = np.arange(len(METHODS))
    for j, phase in enumerate(("after_sft", "after_rl")):
        means = [np.mean(rows[phase][name]) for name in METHODS]
        stds = [np.std(rows[phase][name]) for name in METHODS]
        ax.bar(x + (j - 0.5) * width, means, width, yerr=stds, capsize=3, label=phase.replace("_", " "))
    ax.set_xticks(x, METHODS)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("ArithChain, N = 12 samples per problem (K = 8 solutions + 4 deliberations)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--rl-steps", type=int, default=8)
    p.add_argument("--problems", type=int, default=150, help="held-out problems per evaluation")
    p.add_argument("--out", default="benchmarks/heavyskill")
    p.add_argument("--runs", default="runs/exp_heavyskill")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override, every run")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    common = {"sft.train.steps": args.sft_steps, "sft.train.progress_bar": False, "rl.steps": args.rl_steps,
              "rl.progress_bar": False, "eval.num_problems": 0, "checkpoint.every": 0,
              **dict(kv.split("=", 1) for kv in args.set)}
    warm_cfg = configure({**common, "output_dir": os.path.join(args.runs, "warmup")})
    initial = initial_policy(warm_cfg, warm_up=True)  # one warm-up, shared by the seeds
    _, parts, params0, rest, _ = initial
    problems = task_from_config(warm_cfg.data).eval_set(args.problems, seed=0)
    rows: dict[str, dict[str, list[float]]] = {ph: {m: [] for m in METHODS} for ph in ("after_sft", "after_rl")}
    runs = []
    for seed in args.seeds:
        cfg = configure({**common, "seed": seed, "output_dir": os.path.join(args.runs, f"s{seed}")})
        before = heavyskill_eval(cfg, parts, params0, rest, problems, eval_key(seed))
        summary = run_rl(cfg, initial=initial)
        after = heavyskill_eval(cfg, parts, summary["final_state"].params, rest, problems, eval_key(seed))
        train = [{k: float(v) for k, v in r.items() if k in ("step", "accuracy", "heavyskill/solution_accuracy",
                                                            "heavyskill/pass@8", "loss")} for r in summary["records"]]
        runs.append({"seed": seed, "after_sft": before, "after_rl": after, "train": train})
        for m in METHODS:
            rows["after_sft"][m].append(before[m])
            rows["after_rl"][m].append(after[m])
        print(f"seed {seed}: after SFT {before}\n        after RL  {after}", flush=True)
    lines = ["| phase | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for phase in ("after_sft", "after_rl"):
        lines.append(f"| {phase} | " + " | ".join(f"{np.mean(rows[phase][m]):.3f} +- {np.std(rows[phase][m]):.3f}"
                                                   for m in METHODS) + " |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    meta = {"config": CONFIG, "overrides": args.set, "seeds": args.seeds, "sft_steps": args.sft_steps, "rl_steps": args.rl_steps,
            "problems": args.problems, "num_solutions": 8, "summary_k": 4, "n_samples": 12,
            "wall_s": time.perf_counter() - t0}
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "runs": runs, "table": table}, f, indent=1)
    plot(args.out + ".png", rows)
    print(f"wrote {args.out}.json and {args.out}.png in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
