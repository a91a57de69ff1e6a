"""Experiment: behaviour cloning on all demonstrations vs on the STRIL-filtered ones.

    python tools/exp_stril.py --seeds 3 --out benchmarks/stril.json

Per seed: `--per-player` repeated rock-paper-scissors episodes (`--rounds` rounds, move noise
`--noise`) of each scripted player (random / exploitable / dominant) against the counter opponent
(`jaxrl_llm.analysis.stril`); a VRNN with per-trajectory strategy codes is fitted on them; RI and EL
are read off; the trajectories below both medians are kept; and the tabular behaviour-cloned policy
of all data and of the kept set are each played (sampled) against the same opponent for
`--eval-episodes` episodes. Reported: mean reward per round of both clones, the kept count per
player, and the mean RI / EL per player. Writes the JSON to `--out` and a PNG plot next to it
(same stem), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from jaxrl_llm.analysis import stril


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    data = stril.generate_games(args.per_player, args.rounds, seed, noise=args.noise)
    cfg = stril.VRNNConfig(steps=args.steps, seed=seed)
    res = stril.run_stril(data, cfg, eval_episodes=args.eval_episodes, eval_seed=seed)
    kept_players = data.player[res.kept]
    per_player = {
        name: {
            "kept": int((kept_players == i).sum()),
            "ri": float(res.ri[data.player == i].mean()),
            "el": float(res.el[data.player == i].mean()),
            "return": float(res.returns[data.player == i].mean()),
        }
        for i, name in enumerate(stril.PLAYERS)
    }
    return {
        "seed": seed,
        "num_trajectories": int(data.obs.shape[0]),
        "num_kept": int(res.kept.size),
        "bc_all": float(res.bc_all),
        "bc_stril": float(res.bc_kept),
        "data_return": float(res.returns.mean()),
        "loss_first": float(res.losses[0]),
        "loss_last": float(res.losses[-1]),
        "players": per_player,
    }


def table(rows: list[dict]) -> str:
    lines = ["| seed | kept / N | kept (rand/expl/dom) | BC all | BC STRIL |", "|---|---|---|---|---|"]
    for r in rows:
        kp = "/".join(str(r["players"][p]["kept"]) for p in stril.PLAYERS)
        lines.append(f"| {r['seed']} | {r['num_kept']} / {r['num_trajectories']} | {kp} | "
                     f"{r['bc_all']:.3f} | {r['bc_stril']:.3f} |")
    a, b = np.array([r["bc_all"] for r in rows]), np.array([r["bc_stril"] for r in rows])
    lines.append(f"| mean +/- std | | | {a.mean():.3f} +/- {a.std():.3f} | {b.mean():.3f} +/- {b.std():.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = [r["seed"] for r in rows]
    x = np.arange(len(seeds))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(x - 0.2, [r["bc_all"] for r in rows], 0.4, label="BC on all data")
    ax.bar(x + 0.2, [r["bc_stril"] for r in rows], 0.4, label="BC on STRIL-filtered data")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(x, [f"seed {s}" for s in seeds])
    ax.set_ylabel("mean reward per round vs counter")
    ax.set_title("Repeated RPS: BC with and without STRIL", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. seeds-1)")
    p.add_argument("--out", default="benchmarks/stril.json")
    p.add_argument("--per-player", type=int, default=48, help="episodes per scripted player")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--noise", type=float, default=0.1, help="probability of a uniform move per round")
    p.add_argument("--steps", type=int, default=300, help="VRNN Adam steps")
    p.add_argument("--eval-episodes", type=int, default=400)
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    start = time.time()
    rows = [run_seed(s, args) for s in range(args.seeds)]
    result = {"config": vars(args), "seeds": rows,
              "bc_all_mean": float(np.mean([r["bc_all"] for r in rows])),
              "bc_stril_mean": float(np.mean([r["bc_stril"] for r in rows])),
              "seconds": time.time() - start}
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
