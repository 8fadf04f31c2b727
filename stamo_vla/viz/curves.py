"""Training curves: a metric's series from a run's metrics.jsonl, and one figure of several panels."""

from __future__ import annotations

from pathlib import Path


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the records that log it."""
    rows = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_curves(curves: dict[str, list[tuple[str, list[int], list[float]]]], path: Path) -> None:
    """One panel per metric, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (title, lines) in zip(axes[0], curves.items()):
        for label, steps, values in lines:
            if steps:
                ax.plot(steps, values, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
