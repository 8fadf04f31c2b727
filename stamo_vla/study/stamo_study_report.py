"""STAMO_STUDY.md, stamo_study.json and the PNGs of a StaMo study: every number is read from the run's files."""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from stamo_vla.fileio import read_json, read_jsonl, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from stamo_vla.study.stamo_study import StaMoStudy

GAP_TARGET_DB = 2.0  # issue 12: own - shuffled PSNR on held-out episodes


def _read(path: Path) -> dict | None:
    return (
        read_json(path, "Restore it, or run the study again in a new output folder.")
        if path.is_file()
        else None
    )


def plot_eval_curves(study: StaMoStudy, path: Path) -> bool:
    """Held-out PSNR from own vs shuffled states at every evaluation, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(study.run_name(b, s), study.stamo_dir(b, s) / "metrics.jsonl") for b, s in study.runs()]
    runs = [(n, p) for n, p in runs if p.is_file()]
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.3), squeeze=False)
    for ax, (name, file) in zip(axes[0], runs):
        evals = [r for r in read_jsonl(file) if "eval/psnr" in r]
        for key, label in (
            ("eval/psnr", "own state"),
            ("eval/psnr_shuffled", "shuffled state"),
            ("eval/psnr_neighbour", "neighbour state"),
        ):
            rows = [r for r in evals if key in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out PSNR (dB)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _recon_section(study: StaMoStudy, recon: dict | None, stamo: dict) -> list[str]:
    lines = ["## Reconstruction on held-out episodes", ""]
    if not recon:
        return [*lines, "_not run_", ""]
    lines += [
        "Each held-out image decoded from its own state, from a randomly paired held-out image's state "
        "(shuffled) and from the previous evaluation image's state (neighbour: usually an earlier frame of the "
        "same episode, where only the arm and objects moved), with the same noise; mean over the evaluation "
        "images and 3 decoding noises (± std of the own − shuffled gap over the noises).",
        "",
        "| run | PSNR own | PSNR shuffled | own − shuffled (dB) | PSNR neighbour | own − neighbour | SSIM own / "
        "shuffled | VAE ceiling | mean frame | state var. fraction (raw → bottleneck) | eff. rank | StaMo s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    import numpy as np

    for name, m in recon.items():
        gaps = m["gap_db_per_noise"]
        run = stamo.get(name, {})
        seconds = f"{run.get('seconds', float('nan')):.0f}"
        if run.get("resumed_from_step"):
            seconds += f" (resumed at step {run['resumed_from_step']})"
        neighbour = m.get("psnr_neighbour", float("nan"))
        lines.append(
            f"| {name} | {m['psnr']:.2f} | {m['psnr_shuffled']:.2f} | {m['gap_db']:+.2f} ± {np.std(gaps, ddof=1):.2f} | "
            f"{neighbour:.2f} | {m['psnr'] - neighbour:+.2f} | "
            f"{m['ssim']:.3f} / {m['ssim_shuffled']:.3f} | {m['psnr_vae']:.2f} | {m['psnr_mean_frame']:.2f} | "
            f"{m['raw_state_var_fraction']:.3g} → {m['state_var_fraction']:.3g} | {m['state_effective_rank']:.2f} | "
            f"{seconds} |"
        )
    by_backbone: dict[str, list[float]] = {}
    for name, m in recon.items():
        by_backbone.setdefault(name.split("_backbone")[0], []).append(m["gap_db"])
    if any(len(v) > 1 for v in by_backbone.values()):
        lines += ["", "Own − shuffled per backbone, mean ± std over StaMo pretraining seeds:", ""]
        lines += [
            f"- {b} backbone: {np.mean(v):+.2f} ± {np.std(v, ddof=1):.2f} dB ({len(v)} seeds)"
            for b, v in by_backbone.items()
            if len(v) > 1
        ]
    best = max(recon.values(), key=lambda m: m["gap_db"])["gap_db"]
    verdict = "met" if best >= GAP_TARGET_DB else "NOT met"
    lines += [
        "",
        f"Target own − shuffled ≥ {GAP_TARGET_DB} dB on held-out episodes: **{verdict}** (best run {best:+.2f} dB).",
        "",
    ]
    for name in recon:
        warnings = stamo.get(name, {}).get("health", {}).get("warnings", [])
        for w in warnings:
            lines += [f"- health warning ({name}): {w}"]
    return [*lines, ""]


def _claim_lines(probe: dict) -> list[str]:
    """Per backbone and k: is the StaMo motion's MSE below every baseline's (mean over splits)?"""
    from stamo_vla.study.probe import RANDOM_SPLIT

    p = probe["protocols"][RANDOM_SPLIT]
    lines = []
    for stamo in [n for n in probe["inputs"] if n.startswith("stamo_motion")]:
        tag = stamo[len("stamo_motion") :]
        rivals = [
            n for n in probe["inputs"] if n != stamo and n != "proprio_delta" and (tag in n or "[" not in n)
        ]
        verdicts = []
        for k in p["mean"]:
            m = p["mean"][k]
            beaten = [r for r in rivals if m[stamo] >= m[r]]
            below_mean = m[stamo] < m["mean_predictor"]
            verdicts.append(
                f"k={k}: "
                + ("below all" if not beaten else "not below " + ", ".join(beaten))
                + ("" if below_mean else "; not below the mean predictor")
            )
        lines.append(f"- `{stamo}` vs {', '.join(f'`{r}`' for r in rivals)} — " + "; ".join(verdicts) + ".")
    return lines


def _probe_section(probe: dict | None, results: Path) -> list[str]:
    from stamo_vla.study.probe import markdown_table

    lines = ["## Latent-action probe (paper §4.6)", ""]
    if not probe:
        return [*lines, "_not run_", ""]
    lines += [
        f"{probe['num_episodes']} episodes of {len(probe['tasks'])} tasks; normalized k-step action chunks; every "
        "input gets the same MLP, standardized with a floor, fitted with weight decay and early-stopped on "
        "validation episodes, starting from the mean predictor. Splits are by episode. StaMo pretraining seed "
        f"{probe['stamo_seed']}; the ± is over episode splits. StaMo and the pretrained backbone were trained on "
        "frames of all but the reconstruction's held-out episodes, without actions.",
        "",
    ]
    for proto in probe["protocols"]:
        lines += [f"**{proto}**", "", markdown_table(probe, proto), ""]
    lines += [
        "![probe](probe.png)",
        "",
        "The paper's claim, StaMo Δ below the other inputs (random-split means):",
        "",
    ]
    lines += _claim_lines(probe)
    return [*lines, ""]


def _seconds_per_run(study: StaMoStudy, vae: dict | None, backbone: dict | None, stamo: dict) -> dict:
    """One run's pipeline time: the VAE (+ the backbone when it uses the pretrained one) + its StaMo pretraining."""
    pretrain_s = (vae or {}).get("seconds", 0) + (backbone or {}).get("seconds", 0)
    return {
        study.run_name(b, s): (pretrain_s if b == "pretrained" else (vae or {}).get("seconds", 0))
        + stamo[study.run_name(b, s)].get("seconds", 0)
        for b, s in study.runs()
    }


def _data_lines(study: StaMoStudy, split: dict) -> list[str]:
    c = study.cfg
    return [
        "# StaMo study: does the tiny StaMo carry the state, and are its differences latent actions?",
        "",
        "Produced by `stamo-vla stamo-study` (config in `stamo_study.json`); every number is read from the run's "
        f"files. Machine: {os.cpu_count()} CPU cores shared with other jobs, one torch thread.",
        "",
        "## Data",
        "",
        f"{split.get('num_episodes', '?')} scripted episodes of `{c.suite}` tasks {c.task_ids}; "
        f"{split.get('num_frames', '?')} frames (stride {c.frame_stride}). Held out from every training stage: "
        f"{len(split.get('heldout_episodes', []))} whole episodes ({split.get('num_heldout_frames', '?')} frames).",
        "",
    ]


def _stage_lines(
    study: StaMoStudy, vae: dict | None, backbone: dict | None, stamo: dict, per_run: dict
) -> list[str]:
    """The stages and their health gates: VAE, backbone, each StaMo run's gap check, the time per run.

    Args:
        study: the study (its config holds the gates).
        vae: ``vae.json`` (None: not run).
        backbone: ``backbone.json`` (None: not run).
        stamo: run name -> its ``result.json``.
        per_run: run name -> pretraining seconds (`_seconds_per_run`).
    """
    lines = ["## Stages and health gates", ""]
    if vae:
        lines.append(
            f"- VAE: {vae['steps']} fit steps in {vae['seconds']:.0f} s; held-out PSNR {vae['psnr_heldout']:.2f} dB vs "
            f"{vae['psnr_mean_frame']:.2f} dB for the mean training frame (gate: +{study.cfg.vae_min_gain_db} dB)."
        )
    if backbone:
        h = backbone["history"]["heldout_relative_loss"]
        steps = backbone["config"].get(
            "max_steps", backbone["config"].get("steps")
        )  # `steps` before the rename
        lines.append(
            f"- DINOv2 backbone, masked-image pretraining: {steps} steps in "
            f"{backbone['seconds']:.0f} s; held-out masked-patch loss relative to predicting zeros {h[0]:.3f} → {h[-1]:.3f}."
        )
    for name, rec in stamo.items():
        gap = rec.get("health", {}).get("gap_check")
        if gap:
            lines.append(
                f"- {name}: at step {gap['step']} held-out flow loss own {gap['loss_own']:.4f} vs shuffled "
                f"{gap['loss_shuffled']:.4f} (relative gap {gap['loss_gap']:+.3f})."
            )
    resumed = [n for n, rec in stamo.items() if rec.get("resumed_from_step")]
    return [
        *lines,
        "- Total pretraining time (VAE + backbone + StaMo), per run: "
        + ", ".join(f"{n} {sec / 60:.1f} min" for n, sec in per_run.items())
        + (f" (too low for {', '.join(resumed)}: resumed, only the last call was timed)" if resumed else "")
        + ".",
        "",
    ]


def _figure_lines(study: StaMoStudy, results: Path, curves: bool) -> list[str]:
    """The own-vs-shuffled curves and each run's held-out sheet and interpolation, where they were drawn."""
    lines = []
    if curves:
        lines += [
            "Own vs shuffled held-out PSNR at every evaluation:",
            "",
            "![curves](own_vs_shuffled.png)",
            "",
        ]
    for b, s in study.runs():
        name = study.run_name(b, s)
        if (results / f"sheet_{name}.png").is_file():
            lines += [
                f"Held-out sheet, {name} (rows: originals | own-state decode | shuffled-state decode | "
                "interpolation between the first two states):",
                "",
                f"![sheet {name}](sheet_{name}.png)",
                "",
                f"Interpolation between two frames of one held-out episode ({name}):",
                "",
                f"![interpolation {name}](interpolation_{name}.png)",
                "",
            ]
    return lines


def write_report(study: StaMoStudy) -> Path:
    """Write ``stamo_study.json`` and ``STAMO_STUDY.md`` (with the probe plot) from the study's files."""
    from stamo_vla.study.probe import plot

    out, results = study.out, study.results
    results.mkdir(parents=True, exist_ok=True)
    split = _read(study.split_file) or {}
    vae = _read(out / "vae.json")
    backbone = _read(out / "backbone.json")
    recon = _read(out / "reconstruction.json")
    probe = _read(out / "probe.json")
    stamo = {
        study.run_name(b, s): _read(study.stamo_dir(b, s) / "result.json") or {} for b, s in study.runs()
    }
    if probe:
        plot(probe, str(results / "probe.png"))
    curves = plot_eval_curves(study, results / "own_vs_shuffled.png")
    per_run = _seconds_per_run(study, vae, backbone, stamo)
    summary = {
        "config": dataclasses.asdict(study.cfg),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "split": {k: v for k, v in split.items() if k != "episode_names"},
        "vae": vae,
        "backbone": backbone,
        "stamo_runs": stamo,
        "reconstruction": recon,
        "pretraining_seconds_per_run": per_run,
        "probe": probe,
    }
    write_json_atomic(results / "stamo_study.json", summary)
    lines = _data_lines(study, split) + _stage_lines(study, vae, backbone, stamo, per_run)
    lines += _recon_section(study, recon, stamo)
    lines += _figure_lines(study, results, curves)
    lines += _probe_section(probe, results)
    path = results / "STAMO_STUDY.md"
    write_text_atomic(path, "\n".join(lines))
    print(f"[stamo-study] report written to {path}")
    return path
