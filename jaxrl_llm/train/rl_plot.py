"""Plot an RL run from its `metrics.jsonl`: reward, held-out accuracy and DGG gate events vs step."""

from __future__ import annotations

from jaxrl_llm.train.metrics import read_jsonl


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in records if isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [float(r[key]) for r in rows]


def plot_rl_curves(jsonl_path: str, png_path: str) -> str:
    """Three stacked panels (reward mean and train accuracy; eval accuracy; gate events and
    reuse epochs used) from a metrics JSONL into `png_path`; returns `png_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl_path)
    if not any("reward/mean" in r or "eval/accuracy" in r for r in records):
        raise ValueError(f"{jsonl_path} has no RL records (reward/mean or eval/accuracy) to plot")
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    axes[0].plot(*_series(records, "reward/mean"), lw=1.2, label="reward mean")
    axes[0].plot(*_series(records, "accuracy"), lw=1.0, ls="--", label="rollout accuracy")
    axes[0].set_ylabel("reward")
    axes[0].legend(loc="lower right")
    axes[1].plot(*_series(records, "eval/accuracy"), marker="o", lw=1.2, color="tab:green", label="sampled")
    axes[1].plot(*_series(records, "eval/greedy_accuracy"), marker="s", lw=1.0, ls="--", color="tab:olive",
                 label="greedy")
    axes[1].set_ylabel("held-out accuracy")
    axes[1].legend(loc="lower right")
    steps, events = _series(records, "gate/events")
    axes[2].bar(steps, events, color="tab:red", label="gate events", width=0.8)
    axes[2].plot(*_series(records, "reuse/epochs_used"), lw=1.0, color="tab:blue", label="reuse epochs used")
    axes[2].set_ylabel("DGG")
    axes[2].set_xlabel("RL step")
    axes[2].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
