"""Experiment: knowledge-neuron recall in 2-hop questions on FactHop (spec section 7's demo), several seeds.

    python tools/exp_knowledge_neurons.py --seeds 3 --out benchmarks/knowledge_neurons/kn.json

Per seed, a FactHop world (`envs/fact_hop.py`) of `--countries` countries is drawn and the tiny decoder
is trained from scratch with the SFT trainer (`train/sft_run.py: setup_sft`, data.path) on every
single-hop fact and on the 2-hop questions of the first `--taught` countries; the others' 2-hop
questions must be composed. Then, per country (the mean over its 3 paraphrases):

- accuracy of the 2-hop question (the answer's first character is the argmax next token);
- the KN score of each hop (`analysis/knowledge_neurons.kn_score`): the hop's neurons (found on its
  single-hop prompts) attributed on the 2-hop prompt, over their attribution on the single-hop prompt;
- a written-out chain ("CoT": "The capital of X is C. " before the hop-2 prompt about C): its accuracy
  and the hop-2 KN score on it (the paper: CoT intensifies recall);
- P(answer) with the neurons of hop 1 or hop 2 scaled by each `--factors` value at the answer position
  (x0 suppress, x2 enhance), and, as a control, the same number of random FFN neurons of the same
  layers scaled by 0 (is it the knowledge neurons that matter, or any neurons?).

Writes the JSON to `--out`, a PNG next to it (same stem), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from jaxrl_llm import cli
from jaxrl_llm.analysis import knowledge_neurons as kn
from jaxrl_llm.envs import fact_hop
from jaxrl_llm.train.sft_run import setup_sft, train_loop

GROUPS = ("taught", "composed")


def cot_prompt(world: fact_hop.FactWorld, country: int, paraphrase: int) -> str:
    """The hop-1 fact written out, then the hop-2 question about the bridge entity."""
    capital = world.capitals[country]
    return (fact_hop.PARAPHRASES["capital"][0].format(x=world.countries[country]) + capital + ". "
            + fact_hop.PARAPHRASES["mayor"][paraphrase].format(x=capital))


def train_model(world: fact_hop.FactWorld, seed: int, args: argparse.Namespace, workdir: str):
    """The SFT'd decoder and its tokenizer (facts + the taught 2-hop questions, `args.steps` steps)."""
    path = os.path.join(workdir, f"facts_{seed}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in fact_hop.sft_records(world, two_hop_countries=range(args.taught)):
            f.write(json.dumps(r) + "\n")
    cfg = cli.load_config_file("configs/sft_tiny.py")
    overrides = {"seed": seed, "data.path": path, "data.seq_len": 48, "train.steps": args.steps,
                 "train.batch_size": args.batch_size, "train.progress_bar": False, "train.log_every": args.steps,
                 "optimizer.warmup_steps": max(1, args.steps // 8), "optimizer.weight_decay": 0.0,
                 "optimizer.learning_rate": args.lr, "mesh.fsdp": 1, "eval.num_problems": 0,
                 "model.num_layers": args.num_layers, "model.hidden_size": args.hidden_size,
                 "model.intermediate_size": 2 * args.hidden_size, "model.head_dim": args.hidden_size // 4}
    for key, value in overrides.items():
        cli.apply_override(cfg, key, str(value))
    setup = setup_sft(cfg)
    state, records = train_loop(setup.state, setup.step_fn, setup.iterator, args.steps, log_every=args.steps)
    return setup.parts.merge(state.params, setup.rest), setup.tokenizer, float(records[-1]["loss"])


def run_seed(seed: int, args: argparse.Namespace, workdir: str) -> dict:
    world = fact_hop.make_world(args.countries, seed=seed)
    model, tok, final_loss = train_model(world, seed, args, workdir)
    shape = (len(model.layers), model.config.intermediate_size)
    rng = np.random.default_rng([seed, 11])

    def first_id(answer: str) -> int:
        return tok.encode(answer[0])[0]

    def attribution(prompt: str, answer: str):
        return kn.neuron_attributions(model, tok.encode_prompt(prompt), first_id(answer))

    def right(prompt: str, answer: str) -> float:
        return float(np.argmax(kn.answer_prob(model, tok.encode_prompt(prompt))) == first_id(answer))

    def p_and_acc(tokens, answer_id: int, scale=None) -> tuple[float, float]:
        """Mean P(answer) and accuracy over the prompts `tokens`, FFN activations scaled by `scale [L, F]`."""
        probs = [kn.answer_prob(model, t, scale=scale) for t in tokens]
        return (float(np.mean([p[answer_id] for p in probs])),
                float(np.mean([np.argmax(p) == answer_id for p in probs])))

    def score(attr_prompt, attr_single, neurons) -> float:
        return kn.kn_score(attr_prompt, attr_single, neurons) if neurons else float("nan")

    by_hop = {hop: fact_hop.questions(world, hop) for hop in fact_hop.HOPS}
    countries = []
    for i in range(args.countries):
        asked = {hop: [q for q in qs if q.country == i] for hop, qs in by_hop.items()}
        answer = world.mayors[i]
        answer_id = first_id(answer)
        two_hop = asked["two_hop"]
        tokens = [tok.encode_prompt(q.prompt) for q in two_hop]
        attr_2hop = np.mean([attribution(q.prompt, answer) for q in two_hop], axis=0)
        row: dict = {"country": world.countries[i], "group": "taught" if i < args.taught else "composed"}
        row["p_base"], row["acc_2hop"] = p_and_acc(tokens, answer_id)
        row["acc_single"] = float(np.mean([right(q.prompt, q.answer) for q in asked["capital"] + asked["mayor"]]))
        neurons, single = {}, {}
        for j, hop in ((1, "capital"), (2, "mayor")):
            attrs = [attribution(q.prompt, q.answer) for q in asked[hop]]
            neurons[j] = kn.shared_neurons([kn.knowledge_neurons(a) for a in attrs])
            single[j] = np.mean(attrs, axis=0)
            row[f"num_neurons{j}"] = len(neurons[j])
            row[f"kn{j}"] = score(attr_2hop, single[j], neurons[j])
        cots = [cot_prompt(world, i, p) for p in range(len(two_hop))]
        row["acc_cot"] = float(np.mean([right(c, answer) for c in cots]))
        row["kn2_cot"] = score(np.mean([attribution(c, answer) for c in cots], axis=0), single[2], neurons[2])
        for j in (1, 2):
            for f in args.factors:
                row[f"p_hop{j}_x{f:g}"], row[f"acc_hop{j}_x{f:g}"] = p_and_acc(
                    tokens, answer_id, kn.neuron_scale(neurons[j], shape, f)) if neurons[j] else (float("nan"),) * 2
        # Control: as many random neurons, layer for layer, as hop 2's knowledge neurons, suppressed.
        if neurons[2]:
            per_layer = np.bincount([layer for layer, _ in neurons[2]], minlength=shape[0])
            control = {(int(layer), int(idx)) for layer, n in enumerate(per_layer)
                       for idx in rng.choice(shape[1], size=n, replace=False)}
            row["p_random_x0"], row["acc_random_x0"] = p_and_acc(tokens, answer_id, kn.neuron_scale(control, shape, 0.0))
        else:
            row["p_random_x0"], row["acc_random_x0"] = float("nan"), float("nan")
        countries.append(row)
    out = {"seed": seed, "final_loss": final_loss, "countries": countries}
    for g in GROUPS:
        rows = [r for r in countries if r["group"] == g]
        out[g] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("country", "group")}
    for ok, name in ((True, "right"), (False, "wrong")):  # KN scores by 2-hop outcome (the paper's split)
        rows = [r for r in countries if (r["acc_2hop"] > 0.5) == ok]
        out[f"kn_when_{name}"] = {"n": len(rows), **({k: float(np.nanmean([r[k] for r in rows]))
                                                     for k in ("kn1", "kn2", "kn2_cot")} if rows else {})}
    print(f"seed {seed}: loss {final_loss:.3f}; " + "; ".join(
        f"{g}: 2-hop acc {out[g]['acc_2hop']:.2f} P {out[g]['p_base']:.3f} -> x2 hop 2 {out[g]['p_hop2_x2']:.3f}, "
        f"CoT acc {out[g]['acc_cot']:.2f}" for g in GROUPS), flush=True)
    return out


def summary(rows: list[dict], args: argparse.Namespace) -> dict:
    keys = list(rows[0]["taught"])
    out = {g: {k: (float(np.nanmean([r[g][k] for r in rows])), float(np.nanstd([r[g][k] for r in rows])))
               for k in keys} for g in GROUPS}
    for name in ("right", "wrong"):
        vals = [r[f"kn_when_{name}"] for r in rows if r[f"kn_when_{name}"]["n"]]
        out[f"kn_when_{name}"] = {"countries": int(sum(v["n"] for v in vals)),
                                  **{k: float(np.nanmean([v[k] for v in vals])) for k in ("kn1", "kn2", "kn2_cot")}
                                  } if vals else {"countries": 0}
    # Per-seed relative change of P(answer) by the x2 enhancement of hop 2 (the paper's "amplifying helps").
    for g in GROUPS:
        gains = [r[g]["p_hop2_x2"] / r[g]["p_base"] for r in rows]
        out[g]["hop2_x2_gain_per_seed"] = [float(x) for x in gains]
    return out


def table(rows: list[dict], args: argparse.Namespace) -> str:
    s = summary(rows, args)
    mean = lambda g, k: f"{s[g][k][0]:.3f} +- {s[g][k][1]:.3f}"  # noqa: E731
    lines = ["2-hop questions | accuracy | KN score hop 1 | KN score hop 2 | CoT accuracy | CoT KN score hop 2",
             "---|---|---|---|---|---"]
    for g in GROUPS:
        lines.append(f"{g} | {mean(g, 'acc_2hop')} | {mean(g, 'kn1')} | {mean(g, 'kn2')} | {mean(g, 'acc_cot')} | "
                     f"{mean(g, 'kn2_cot')}")
    lines += ["", "2-hop prompts | " + " | ".join(
        f"hop {j} x{f:g}" for j in (1, 2) for f in args.factors) + " | base | random x0",
        "---|" + "---|" * (2 * len(args.factors) + 2)]
    for g in GROUPS:
        for what, base in (("p", "p_base"), ("acc", "acc_2hop")):
            lines.append(f"{g}, {'P(answer)' if what == 'p' else 'accuracy'} | " + " | ".join(
                f"{s[g][f'{what}_hop{j}_x{f:g}'][0]:.3f}" for j in (1, 2) for f in args.factors)
                + f" | {s[g][base][0]:.3f} | {s[g][f'{what}_random_x0'][0]:.3f}")
    for name in ("right", "wrong"):
        k = s[f"kn_when_{name}"]
        if k["countries"]:
            lines.append(f"2-hop {name} ({k['countries']} countries): KN score hop 1 {k['kn1']:.3f}, hop 2 "
                         f"{k['kn2']:.3f}, hop 2 with CoT {k['kn2_cot']:.3f}")
    for g in GROUPS:
        lines.append(f"{g}: P(answer) x2 hop 2 / base per seed: "
                     + ", ".join(f"{x:.2f}" for x in s[g]["hop2_x2_gain_per_seed"]))
    return "\n".join(lines)


def plot(rows: list[dict], args: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(rows, args)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for g, marker in zip(GROUPS, ("o", "x")):
        for j, color in ((1, "#4c72b0"), (2, "#dd8452")):
            pts = [(c[f"kn{j}"], c["acc_2hop"]) for r in rows for c in r["countries"] if c["group"] == g]
            ax1.scatter(*zip(*pts), marker=marker, color=color, label=f"{g}, hop {j}", alpha=0.7)
    ax1.set_xlabel("KN score on the 2-hop prompt"); ax1.set_ylabel("2-hop accuracy (3 paraphrases)")
    ax1.set_title("recall of each hop vs 2-hop accuracy"); ax1.legend(fontsize=8)
    for g, style in zip(GROUPS, ("-", "--")):
        for j, color in ((1, "#4c72b0"), (2, "#dd8452")):
            ys = [s[g][f"p_hop{j}_x{f:g}"][0] / s[g]["p_base"][0] for f in args.factors]
            ax2.plot(args.factors, ys, style, marker="o", color=color, label=f"{g}, hop {j}")
    ax2.axhline(1.0, color="k", lw=0.5)
    ax2.set_xlabel("activation factor on the hop's knowledge neurons"); ax2.set_ylabel("P(answer) / unedited")
    ax2.set_title(f"interventions ({len(rows)} seeds)"); ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. seeds-1)")
    p.add_argument("--out", default="benchmarks/knowledge_neurons/kn.json")
    p.add_argument("--countries", type=int, default=8, help="countries in the world (<= 13)")
    p.add_argument("--taught", type=int, default=4, help="countries whose 2-hop questions are trained on")
    p.add_argument("--steps", type=int, default=150, help="SFT steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden-size", type=int, default=64, help="the decoder width (4 heads; 64 is the `tiny` preset)")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--factors", type=float, nargs="+", default=[0.0, 0.5, 2.0, 3.0])
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if not 1 <= args.taught < args.countries:
        raise ValueError(f"--taught must be in [1, --countries); got {args.taught} with --countries {args.countries}")
    if 2.0 not in args.factors:
        raise ValueError(f"--factors must include 2 (the enhancement the summary reports); got {args.factors}")
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        rows = [run_seed(s, args, workdir) for s in range(args.seeds)]
    result = {"config": vars(args), "seeds": rows, "summary": summary(rows, args), "seconds": time.time() - start}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, args, png)
    print(table(rows, args))
    print(f"wrote {args.out} and {png} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
