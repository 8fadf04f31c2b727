"""Figures of the policy study: every seed as a dot (standard and perturbed success), and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stamo_vla.fileio import atomic_path, read_jsonl
from stamo_vla.viz.curves import plot_curves, series

if TYPE_CHECKING:
    from stamo_vla.study.policy_study import PolicyStudy


def plot_seeds(study: PolicyStudy, runs: list[dict], path: Path) -> None:
    """One panel per evaluation (standard, perturbed): each run a dot at its success rate, each arm's mean a bar;
    collapsed runs drawn as open circles.

    Args:
        study: the study.
        runs: the results of every run (`run_results`).
        path: the PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = study.cfg.primary_arms + study.cfg.secondary_arms
    panels = [k for k in ("standard", "perturbed") if any(r[k] for r in runs)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=((1.3 * len(arms) + 2.5) * len(panels), 3.4), squeeze=False
    )
    for ax, kind in zip(axes[0], panels):
        for i, arm in enumerate(arms):
            mine = [r for r in runs if r["arm"] == arm and r[kind]]
            rates = [100 * r[kind]["success_rate"] for r in mine]
            offsets = [i + 0.25 * ((j % 7) - 3) / 3 for j in range(len(rates))]  # spread ties sideways
            faces = ["none" if r["collapsed"] else f"C{i}" for r in mine]
            ax.scatter(offsets, rates, s=28, facecolors=faces, edgecolors=f"C{i}", zorder=3)
            if rates:
                mean = sum(rates) / len(rates)
                ax.hlines(mean, i - 0.35, i + 0.35, colors="k", linewidth=1.5)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_ylim(-3, 103)
        ax.set_ylabel("success per run (%)")
        ax.set_title(f"{kind} evaluation: every seed a dot (open: collapsed), bar = mean", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_training_curves(study: PolicyStudy, runs: list[dict], path: Path) -> bool:
    """Training losses of every run (and the base); False when no run has logged anything.

    Args:
        study: the study.
        runs: the results of every run (`run_results`).
        path: the PNG written.
    """
    panels: dict[str, list] = {"train/loss_action (L1)": [], "train/loss_future (target)": []}
    for r in runs:
        label = study.run_id(r["arm"], r["seed"])
        records = read_jsonl(study.finetune_root / label / "metrics.jsonl")
        panels["train/loss_action (L1)"].append((label, *series(records, "train/loss_action")))
        panels["train/loss_future (target)"].append((label, *series(records, "train/loss_future")))
    base = read_jsonl(study.base_run / "metrics.jsonl")
    panels["base train/loss (tokens)"] = [("base", *series(base, "train/loss"))]
    panels = {k: [line for line in v if line[1]] for k, v in panels.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not any(k.startswith("train/") for k in panels):
        return False
    plot_curves(panels, path)
    return True
