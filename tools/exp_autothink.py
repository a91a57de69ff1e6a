"""Experiment: AutoThink against GRPO with the plain correctness reward, same task, prompt and warm-up.

    python tools/exp_autothink.py --out benchmarks/methods/autothink_runs --seeds 0 1 2 --steps 30
    python tools/exp_autothink.py --out runs/exp_autothink --summarize-only      # re-read results.json

For each seed one SFT warm-up of `configs/autothink.py` (both modes) is shared by two RL runs
(`--shared-warmup`: one warm-up, of the first seed, for every seed; the seeds then differ in RL only):
`autothink` (the `autothink` scorer with the config's stage schedule) and `grpo` (the same config
with `rl.scorers=('task',)`: reward = correctness). Each final policy (and the warm-up's) is then
sampled on held-out problems, `--samples` per problem at the rollout temperature, and scored per
difficulty: accuracy, think rate and response length (tokens). Writes `results.json` and
`table.md` under `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.envs.autothink_reward import mode_metrics, response_facts
from jaxrl_llm.train.builders import build_tokenizer, task_from_config
from jaxrl_llm.train.rl import initial_policy, run_rl, sampling_config
from jaxrl_llm.train.rl_rollout import (
    decode_responses,
    encode_prompts,
    sample_responses,
)

CONFIG = "configs/autothink.py"
VARIANTS = {"autothink": {}, "grpo": {"rl.scorers": "('task',)"}}
KEYS = ("accuracy", "think_rate", "length")


def configure(overrides: dict[str, Any]):
    cfg = load_config_file(CONFIG)
    for key, value in overrides.items():
        apply_override(cfg, key, str(value))
    return cfg


def held_out_problems(task: Any, num_hard: int, seed: int) -> list:
    """Every easy problem of the first `num_hard + 200` held-out draws (the easy eval space is small)
    and `num_hard` hard ones."""
    problems = task.eval_set(num_hard + 200, seed=seed)
    easy = [p for p in problems if p.metadata["difficulty"] == "easy"]
    hard = [p for p in problems if p.metadata["difficulty"] == "hard"][:num_hard]
    return easy + hard


def mode_eval(cfg: Any, parts: Any, params: Any, rest: Any, mesh: Any, problems: list, samples: int) -> dict:
    """`mode_metrics` of `samples` responses per held-out problem at the rollout temperature."""
    tokenizer, task = build_tokenizer(cfg.data), task_from_config(cfg.data)
    config = dataclasses.replace(sampling_config(cfg, tokenizer), n=samples)
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), 2**31 - 2)
    rollout = sample_responses(parts, params, rest, encode_prompts(tokenizer, problems), key=key, config=config,
                               mesh=mesh)
    texts = decode_responses(tokenizer, rollout)
    rows = [problems[i // samples] for i in range(len(texts))]
    facts = np.asarray([response_facts(task, p, r) for p, r in zip(rows, texts)], bool)
    return mode_metrics(rows, facts[:, 0], facts[:, 1], np.asarray(rollout.lengths))


def base_overrides(seed: int, args) -> dict[str, Any]:
    return {"seed": seed, "rl.steps": args.steps, "rl.progress_bar": False, "checkpoint.every": 0,
            "eval.every": args.steps, **dict(kv.split("=", 1) for kv in args.set)}


def warm_up(seed: int, args) -> tuple[tuple, float]:
    """The seed's warm-up policy and its wall time; its parameters are kept under `--out` and read
    back by a later call (a rerun with other RL settings reuses the warm-up; remove them to redo it)."""
    cfg = configure({**base_overrides(seed, args), "output_dir": os.path.join(args.out, "runs", f"warmup_s{seed}")})
    path = os.path.abspath(os.path.join(args.out, f"warmup_s{seed}_params"))
    t0 = time.perf_counter()
    if os.path.isdir(path):
        mesh, parts, params, rest, shardings = initial_policy(cfg, warm_up=False)
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
        params = ocp.StandardCheckpointer().restore(path, like)
        print(f"warm-up of seed {seed} read from {path}", flush=True)
        return (mesh, parts, params, rest, shardings), time.perf_counter() - t0
    initial = initial_policy(cfg, warm_up=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, initial[2], force=True)
    ckptr.wait_until_finished()
    return initial, time.perf_counter() - t0


def run_seed(seed: int, args, initial: tuple | None = None) -> list[dict[str, Any]]:
    """The warm-up (or the shared `initial`) evaluated, then every variant's RL run from it."""
    base = base_overrides(seed, args)
    cfg = configure(base)
    wall = 0.0
    if initial is None:
        initial, wall = warm_up(seed, args)
    mesh, parts, params, rest, _ = initial
    problems = held_out_problems(task_from_config(cfg.data), args.num_hard, seed)
    out = [{"variant": "warm-up", "seed": seed, "wall_time_s": wall,
            **mode_eval(cfg, parts, params, rest, mesh, problems, args.samples)}]
    print(f"seed {seed} warm-up: {json.dumps(out[-1])}", flush=True)
    for name, overrides in VARIANTS.items():
        cfg = configure({**base, **overrides, "output_dir": os.path.join(args.out, "runs", f"{name}_s{seed}")})
        t0 = time.perf_counter()
        summary = run_rl(cfg, initial=initial)
        train = [r for r in summary["records"]]
        result = {"variant": name, "seed": seed, "wall_time_s": time.perf_counter() - t0,
                  "train_response_length": float(np.mean([r["response_length"] for r in train])),
                  "train_think_rate_last": train[-1].get("autothink/think_rate"),
                  **mode_eval(cfg, parts, summary["final_state"].params, rest, mesh, problems, args.samples)}
        out.append(result)
        print(f"seed {seed} {name}: {json.dumps(result)}", flush=True)
    return out


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for variant in ("warm-up", *VARIANTS):
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        row = {"variant": variant, "seeds": len(runs)}
        for key in sorted({k for r in runs for k in r if k.split("/")[0] in KEYS}):
            values = [r[key] for r in runs if key in r]
            row[key] = (float(np.mean(values)), float(np.std(values)))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = [("accuracy/easy", "acc easy"), ("accuracy/hard", "acc hard"), ("accuracy", "acc all"),
            ("length/easy", "len easy"), ("length/hard", "len hard"), ("think_rate/easy", "no-think easy"),
            ("think_rate/hard", "no-think hard")]
    lines = ["| variant | seeds | " + " | ".join(c for _, c in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = []
        for key, _ in cols:
            mean, std = r.get(key, (float("nan"), float("nan")))
            if key.startswith("think_rate"):  # reported as the no-think rate
                mean = 1.0 - mean
            cells.append(f"{mean:.3f} +- {std:.3f}" if not key.startswith("length") else f"{mean:.1f} +- {std:.1f}")
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/exp_autothink")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--samples", type=int, default=8, help="held-out samples per problem")
    p.add_argument("--num-hard", type=int, default=100, help="hard held-out problems (all easy ones are used)")
    p.add_argument("--set", action="append", default=[], help="an override for every run, e.g. rl.prompts_per_step=16")
    p.add_argument("--shared-warmup", action="store_true", help="one warm-up (the first seed's) for every seed")
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results: list[dict] = []
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)["runs"]
    if not args.summarize_only:
        done = {r["seed"] for r in results}
        todo = [s for s in args.seeds if s not in done]
        shared = warm_up(args.seeds[0], args)[0] if args.shared_warmup and todo else None
        for seed in todo:
            results.extend(run_seed(seed, args, shared))
            with open(path, "w") as f:  # after every seed: an interrupted sweep resumes where it stopped
                json.dump({"args": vars(args), "runs": results}, f, indent=1)
    rows = summarize(results)
    table = markdown_table(rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
