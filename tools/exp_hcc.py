"""Experiment: SFT on original / HCC-edited / editor-edited ArithChain traces (spec section 4's demo).

    python tools/exp_hcc.py --seeds 3 --out benchmarks/hcc.json

Per seed: `--num-train` answer-correct ArithChain traces (`envs/arith_chain_traces.py`: injected
errors with self-correction, and post-conclusion re-checks at `--continuation-rate`) of train-split
problems are written as three SFT files:

- original: the traces as generated;
- hcc: each trace cut by HCC (`analysis/hcc_model.py`), scored by the tiny decoder trained on the
  original traces of this seed, with tau fitted (`hcc.fit_tau`) on `--fit-tau` further labelled traces;
- editor: each trace cut at its ground-truth boundary b* (`arith_chain_traces.editor_edit`).

A tiny decoder is trained from scratch on each file (`train/sft_run.py: setup_sft`, data.path), then
decodes held-out problems greedily: accuracy (`ArithChainTask.score`), mean output length in tokens
(eos excluded) and the reasoning steps written after the first one stating the answer. Writes the JSON to `--out`,
a PNG next to it (same stem), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from jaxrl_llm import cli
from jaxrl_llm.analysis import hcc
from jaxrl_llm.analysis import hcc_model as hm
from jaxrl_llm.envs.arith_chain import ArithChainTask
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arith_chain_traces import editor_edit, make_trace
from jaxrl_llm.train.evaluate import greedy_completions, make_greedy_generate
from jaxrl_llm.train.sft_run import setup_sft, train_loop

CONDITIONS = ("original", "hcc", "editor")


def make_traces(task: ArithChainTask, n: int, seed: int, args: argparse.Namespace, split: str = "train") -> list:
    """`n` answer-correct traces of `split` problems (errors are always corrected: the paper's traces)."""
    problems = task.sample_batch(n, seed, split)
    rng = np.random.default_rng([seed, 7])
    return [make_trace(rng, num_ops=len(p.metadata["ops"]), operands=p.metadata["operands"], ops=p.metadata["ops"],
                       error_rate=args.error_rate, correction_rate=1.0, continuation_rate=args.continuation_rate,
                       max_continuation=args.max_continuation) for p in problems]


def write_jsonl(path: str, prompts, completions) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p, c in zip(prompts, completions):
            f.write(json.dumps({"prompt": p, "completion": c}) + "\n")


def sft_config(path: str, seed: int, args: argparse.Namespace):
    cfg = cli.load_config_file("configs/sft_tiny.py")
    overrides = {"seed": seed, "data.path": path, "data.task": "arith_chain", "data.seq_len": args.seq_len,
                 "train.steps": args.steps, "train.batch_size": args.batch_size, "train.progress_bar": False,
                 "train.log_every": args.steps, "optimizer.warmup_steps": args.steps // 10,
                 "eval.max_new_tokens": args.max_new_tokens, "mesh.fsdp": 1, "optimizer.learning_rate": args.lr,
                 "model.hidden_size": args.hidden_size, "model.intermediate_size": 2 * args.hidden_size,
                 "model.head_dim": args.hidden_size // 4, "model.num_layers": args.num_layers}
    for key, value in overrides.items():
        cli.apply_override(cfg, key, str(value))
    cfg.data.task_kwargs.num_operands = args.num_operands
    cfg.data.task_kwargs.num_digits = args.num_digits
    return cfg


def train_and_eval(path: str, seed: int, problems, task, args: argparse.Namespace) -> tuple[dict, object]:
    setup = setup_sft(sft_config(path, seed, args))
    state, records = train_loop(setup.state, setup.step_fn, setup.iterator, args.steps, log_every=args.steps)
    generate = make_greedy_generate(setup.parts, args.max_new_tokens, valid_vocab_size=setup.tokenizer.vocab_size)
    outs = greedy_completions(generate, state.params, setup.rest, setup.tokenizer, [p.prompt for p in problems],
                              batch_size=args.eval_batch)
    post = []  # reasoning steps after the first one stating the output's own answer (HCC's k_ans)
    for o in outs:
        split = hcc.split_trace(o)
        k = hcc.answer_step(split.steps, split.final_answer)
        post.append(0 if k is None else len(split.steps) - 1 - k)
    metrics = {"accuracy": float(np.mean([task.score(p, o) for p, o in zip(problems, outs)])),
               "mean_length": float(np.mean([len(setup.tokenizer.encode(o)) for o in outs])),
               "post_answer_steps": float(np.mean(post)),
               "final_loss": float(records[-1]["loss"]) if records else float("nan")}
    return metrics, setup.parts.merge(state.params, setup.rest)


def run_seed(seed: int, args: argparse.Namespace, workdir: str) -> dict:
    task = ArithChainTask(num_operands=args.num_operands, num_digits=args.num_digits)
    traces = make_traces(task, args.num_train, seed, args)
    fit = make_traces(task, args.fit_tau, seed + 1000, args)
    problems = task.eval_set(args.num_eval, seed=seed)
    prompts = [t.prompt for t in traces]
    files = {c: os.path.join(workdir, f"{c}_{seed}.jsonl") for c in CONDITIONS}
    write_jsonl(files["original"], prompts, [t.completion for t in traces])
    write_jsonl(files["editor"], prompts, [editor_edit(t).text for t in traces])
    row: dict = {"seed": seed}
    row["original"], scorer = train_and_eval(files["original"], seed, problems, task, args)
    # HCC: the original-trace model scores every trace; tau from the held-out labelled traces.
    fit_scored = hm.score_traces(scorer, CharTokenizer(), [t.prompt for t in fit], [t.completion for t in fit],
                                 batch_size=64)
    labels = [None if t.boundary == len(t.steps) - 1 else t.boundary for t in fit]
    tau = hcc.fit_tau([s.m for s in fit_scored], [s.k_ans for s in fit_scored], labels, candidates=args.tau_grid)
    if hcc.tau_at_grid_edge(tau, args.tau_grid):
        print(f"seed {seed}: the fitted tau {tau} is the smallest of --tau-grid; extend the grid downwards", flush=True)
    scored = hm.score_traces(scorer, CharTokenizer(), prompts, [t.completion for t in traces], batch_size=64)
    edits = [hm.scored_cut(s, tau) for s in scored]
    write_jsonl(files["hcc"], prompts, [e.text for e in edits])
    pred = [len(t.steps) - 1 if e.boundary is None else e.boundary for t, e in zip(traces, edits)]
    row["hcc_tau"] = tau
    row["hcc_boundary_exact"] = float(np.mean([p == t.boundary for p, t in zip(pred, traces)]))
    row["hcc_boundary_mae"] = float(np.mean([abs(p - t.boundary) for p, t in zip(pred, traces)]))
    row["hcc_removed_steps"] = float(np.mean([e.removed_steps for e in edits]))
    row["editor_removed_steps"] = float(np.mean([len(t.steps) - 1 - t.boundary for t in traces]))
    row["hcc"], _ = train_and_eval(files["hcc"], seed, problems, task, args)
    row["editor"], _ = train_and_eval(files["editor"], seed, problems, task, args)
    print(f"seed {seed}: " + ", ".join(f"{c} acc {row[c]['accuracy']:.3f} len {row[c]['mean_length']:.1f}"
                                       for c in CONDITIONS) + f"; tau {tau:g}", flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for c in CONDITIONS:
        for key in ("accuracy", "mean_length", "post_answer_steps"):
            vals = [r[c][key] for r in rows]
            out[f"{c}_{key}_mean"] = float(np.mean(vals))
            out[f"{c}_{key}_std"] = float(np.std(vals))
    for key in ("hcc_boundary_exact", "hcc_boundary_mae", "hcc_removed_steps", "editor_removed_steps", "hcc_tau"):
        out[f"{key}_mean"] = float(np.mean([r[key] for r in rows]))
    return out


def table(rows: list[dict]) -> str:
    s = summary(rows)
    lines = ["condition | held-out accuracy | output length (tokens) | steps after the answer",
             "----------|-------------------|------------------------|-----------------------"]
    for c in CONDITIONS:
        lines.append(f"{c:<9} | {s[f'{c}_accuracy_mean']:.3f} +- {s[f'{c}_accuracy_std']:.3f}     | "
                     f"{s[f'{c}_mean_length_mean']:6.1f} +- {s[f'{c}_mean_length_std']:4.1f}         | "
                     f"{s[f'{c}_post_answer_steps_mean']:.2f}")
    lines.append(f"HCC vs editor boundary: exact {s['hcc_boundary_exact_mean']:.3f}, mean abs step error "
                 f"{s['hcc_boundary_mae_mean']:.2f}; steps removed per trace: HCC {s['hcc_removed_steps_mean']:.2f}, "
                 f"editor {s['editor_removed_steps_mean']:.2f}; tau {s['hcc_tau_mean']:.3g}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "accuracy", "held-out accuracy"), (axes[1], "mean_length", "output tokens")):
        means = [s[f"{c}_{key}_mean"] for c in CONDITIONS]
        stds = [s[f"{c}_{key}_std"] for c in CONDITIONS]
        ax.bar(CONDITIONS, means, yerr=stds, color=["#888888", "#4c72b0", "#55a868"], capsize=4)
        for i, c in enumerate(CONDITIONS):
            ax.scatter([i] * len(rows), [r[c][key] for r in rows], color="k", s=10, zorder=3)
        ax.set_title(label)
    fig.suptitle(f"SFT on ArithChain traces ({len(rows)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. seeds-1)")
    p.add_argument("--out", default="benchmarks/hcc.json")
    p.add_argument("--num-operands", type=int, default=3)
    p.add_argument("--num-digits", type=int, default=1)
    p.add_argument("--num-train", type=int, default=1500, help="training traces per condition")
    p.add_argument("--fit-tau", type=int, default=100, help="labelled traces that fit HCC's tau")
    # A well-trained scorer gives post-answer steps a mismatch below 0.05, the smallest of fit_tau's
    # default grid, so the grid reaches down to 0.001 here.
    p.add_argument("--tau-grid", type=float, nargs="+",
                   default=[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04] + [round(0.05 * k, 2) for k in range(1, 21)],
                   help="tau candidates hcc.fit_tau chooses from")
    p.add_argument("--num-eval", type=int, default=100, help="held-out problems")
    p.add_argument("--error-rate", type=float, default=0.15)
    p.add_argument("--continuation-rate", type=float, default=0.7)
    p.add_argument("--max-continuation", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="SFT steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden-size", type=int, default=64, help="the tiny decoder's width (4 heads)")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=144)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--eval-batch", type=int, default=100)
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        rows = [run_seed(s, args, workdir) for s in range(args.seeds)]
    result = {"config": vars(args), "seeds": rows, **summary(rows), "seconds": time.time() - start}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png)
    print(table(rows))
    print(f"wrote {args.out} and {png} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
