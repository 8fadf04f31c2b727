"""REPORT.md of a demo run: every number is read from the run's own output files, nothing typed by hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from stamo_vla.fileio import read_json, read_jsonl, write_text_atomic
from stamo_vla.libero.env import SUITE_MAX_STEPS
from stamo_vla.libero.results import package_versions
from stamo_vla.viz.curves import plot_curves, series


class Demo(Protocol):
    """What the report reads of a demo run (`stamo_vla.demo.Demo`, which imports this module)."""

    cfg: Any  # stamo_vla.demo.DemoConfig
    out: Path
    data: Path
    dataset: str
    stamo_run: Path
    runs: Path
    evals: Path
    probe: Path
    marks: Path
    targets: tuple[str, ...]


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path)


ENDS = 3  # logged values averaged at each end of a curve (single batches are noisy)


def _ends(values: list[float], fmt: str) -> str:
    head, tail = values[:ENDS], values[-ENDS:]
    return f"{format(sum(head) / len(head), fmt)} -> {format(sum(tail) / len(tail), fmt)}"


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def _data_section(demo: Demo) -> list[str]:
    manifest = demo.data / demo.dataset / "collect_manifest.json"
    lines = ["## 1. Scripted demonstrations", ""]
    if not manifest.is_file():
        return [*lines, "_not run_", ""]
    episodes = read_json(manifest, "Restore it, or run the demo again in a new output folder.")["episodes"]
    per_task: dict[str, list[dict]] = {}
    for key, rec in episodes.items():
        per_task.setdefault(key.split(":")[0], []).append(rec)
    lines += [
        "| task | kept episodes / attempts | mean steps (successes) | mean kept steps |",
        "|---:|---:|---:|---:|",
    ]
    for task, recs in sorted(per_task.items(), key=lambda kv: int(kv[0])):
        ok = [r for r in recs if r["success"]]
        mean = sum(r["steps"] for r in ok) / len(ok) if ok else 0
        kept = sum(r["kept_steps"] for r in ok) / len(ok) if ok else 0
        lines.append(f"| {task} | {len(ok)} / {len(recs)} | {mean:.0f} | {kept:.0f} |")
    stats_file = demo.runs / "motion" / "dataset_statistics.json"
    if stats_file.is_file():
        s = read_json(stats_file, "Restore it, or run the demo again in a new output folder.")[demo.dataset]
        lines += [
            "",
            f"Dataset `{demo.dataset}`: {s['num_trajectories']} episodes, {s['num_transitions']} transitions "
            "after upstream's no-op filter (RLDS, `modified_libero_rlds` feature spec).",
        ]
    return [*lines, ""]


def _stamo_section(demo: Demo, figures: Path) -> list[str]:
    lines = ["## 2. StaMo pretraining (tiny)", ""]
    records = _jsonl(demo.stamo_run / "metrics.jsonl")
    if not records:
        return [*lines, "_not run_", ""]
    steps, loss = series(records, "train/loss")
    plot_curves({"StaMo flow-matching loss": [("train", steps, loss)]}, figures / "stamo_loss.png")
    lines += [
        f"Flow-matching loss {loss[0]:.4f} (step {steps[0]}) -> {loss[-1]:.4f} (step {steps[-1]}).",
        "",
        f"![StaMo loss]({_rel(figures / 'stamo_loss.png', demo.out)})",
        "",
    ]
    vae = next((r for r in records if "vae/psnr_heldout" in r), None)
    if vae:
        lines += [
            f"VAE fitted before pretraining: held-out PSNR {vae['vae/psnr_heldout']:.2f} dB vs "
            f"{vae['vae/psnr_mean_frame']:.2f} dB for the mean training frame.",
            "",
        ]
    evals = [r for r in records if "eval/psnr" in r]
    if evals:
        lines += [
            "Reconstructions of frames of held-out episodes (no frame of them was trained on), decoded from each "
            "image's own state vs from another image's state, with the same noise, at every evaluation:",
            "",
            "| step | PSNR own | PSNR shuffled | own − shuffled | flow loss own / shuffled | SSIM own / shuffled | "
            "VAE ceiling | mean frame |",
            "|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for e in evals:
            lines.append(
                f"| {e['step']} | {e['eval/psnr']:.2f} | {e['eval/psnr_shuffled']:.2f} | "
                f"{e['eval/psnr'] - e['eval/psnr_shuffled']:+.2f} | "
                f"{e.get('eval/loss', float('nan')):.4f} / {e.get('eval/loss_shuffled', float('nan')):.4f} | "
                f"{e['eval/ssim']:.3f} / {e['eval/ssim_shuffled']:.3f} | {e.get('eval/psnr_vae', float('nan')):.2f} | "
                f"{e.get('eval/psnr_mean_frame', float('nan')):.2f} |"
            )
        lines.append("")
        lines += _collapse_note(evals[-1])
    gap = next((r for r in records if "health/loss_gap" in r), None)
    if gap:
        lines += [
            f"Health check at step {gap['step']}: held-out flow loss own {gap['health/loss_own']:.4f} vs shuffled "
            f"{gap['health/loss_shuffled']:.4f} (relative gap {gap['health/loss_gap']:+.3f}).",
            "",
        ]
    sheets = sorted((demo.stamo_run / "samples").glob("*.png"))
    if sheets:
        lines += [
            "Held-out sample sheet (originals | own-state decode | shuffled-state decode | interpolation strip):",
            "",
            f"![samples]({_rel(sheets[-1], demo.out)})",
            "",
        ]
    return lines


def _collapse_note(e: dict) -> list[str]:
    """Say plainly whether the states carry image information (read from the eval metrics)."""
    gain = e["eval/psnr"] - e["eval/psnr_shuffled"]
    text = f"Own-state PSNR minus shuffled-state PSNR on held-out episodes: {gain:+.2f} dB"
    if "eval/raw_state_var_fraction" in e:
        text += (
            f"; share of the compressor output's energy that varies between images "
            f"{e['eval/raw_state_var_fraction']:.3g} (after the bottleneck {e['eval/state_var_fraction']:.3g}), "
            f"effective rank of the state spread {e['eval/state_effective_rank']:.2f}."
        )
    else:
        text += "."
    if gain < 0.1:
        text += (
            " The decoder reconstructs every image alike whatever its state, so the StaMo targets used by the "
            "fine-tuning below carry little information at this budget."
        )
    elif gain < 1.0:
        text += " The states carry some of the image, below the 1 dB this demo aims for."
    return [text, ""]


def _finetune_section(demo: Demo, figures: Path) -> list[str]:
    lines = ["## 3. Fine-tuning the tiny VLA (LoRA, torchrun)", ""]
    runs = {t: _jsonl(demo.runs / t / "metrics.jsonl") for t in demo.targets}
    if not any(runs.values()):
        return [*lines, "_not run_", ""]
    curves = {}
    for key, title in (
        ("train/loss_action", "action-token CE"),
        ("train/action_accuracy", "action-token accuracy"),
        ("train/future_mse", "StaMo target MSE"),
    ):
        curves[title] = [(f"target={t}", *series(r, key)) for t, r in runs.items()]
    plot_curves(curves, figures / "finetune_curves.png")
    lines += [
        "| target | steps | action CE, first -> last | action accuracy, first -> last | target MSE, first -> last |",
        "|---|---:|---|---|---|",
    ]
    for target, records in runs.items():
        s, ce = series(records, "train/loss_action")
        _, acc = series(records, "train/action_accuracy")
        _, fm = series(records, "train/future_mse")
        if s:
            lines.append(
                f"| {target} | {s[-1]} | {_ends(ce, '.3f')} | {_ends(acc, '.3f')} | {_ends(fm, '.3g') if fm else '-'} |"
            )
    lines += ["", f"First and last: means of the first and last {ENDS} logged values (one batch each).", ""]
    lines += ["", f"![fine-tuning curves]({_rel(figures / 'finetune_curves.png', demo.out)})", ""]
    return lines


def _eval_section(demo: Demo) -> list[str]:
    lines = [
        "## 4. LIBERO evaluation (upstream protocol)",
        "",
        "| policy | success | rate % | 95% Wilson CI % | mean steps | videos |",
        "|---|---:|---:|---|---:|---|",
    ]
    found = False
    for name, label in (
        ("oracle", "scripted oracle (privileged state)"),
        ("motion", "tiny VLA + StaMo motion"),
        ("state", "tiny VLA + StaMo state"),
        ("none", "tiny VLA, plain LoRA"),
    ):
        summary_file = demo.evals / name / "summary.json"
        if not summary_file.is_file():
            continue
        found = True
        o = read_json(summary_file, "Restore it, or run the demo again in a new output folder.")["overall"]
        videos = sorted((demo.evals / name).rglob("*.mp4"))
        link = f"[{len(videos)} videos]({_rel(videos[0].parent, demo.out)})" if videos else "-"
        lines.append(
            f"| {label} | {o['successes']}/{o['episodes']} | {100 * o['success_rate']:.1f} | "
            f"[{100 * o['ci95_low']:.1f}, {100 * o['ci95_high']:.1f}] | {o['mean_steps']:.0f} | {link} |"
        )
    if not found:
        return ["## 4. LIBERO evaluation (upstream protocol)", "", "_not run_", ""]

    steps = demo.cfg.eval_max_steps or SUITE_MAX_STEPS[demo.cfg.suite]
    budget = "the suite's own budget" if not demo.cfg.eval_max_steps else "a shortened budget"
    lines += [
        "",
        f"The VLA runs use {demo.cfg.eval_trials} trial(s) per task (upstream: 50) and {steps} steps per episode "
        f"({budget}), with cameras rendered at {demo.cfg.eval_resolution} px (upstream: 256). The initial states "
        "are the benchmark's; the demonstrations came from fresh placements, never from them. The oracle proves "
        "the harness: image flips, action conventions and success detection.",
        "",
    ]
    return lines


def _probe_section(demo: Demo) -> list[str]:
    md = demo.probe / "probe.md"
    if not md.is_file():
        return ["## 5. Latent-action probe", "", "_not run_", ""]
    return [
        "## 5. Latent-action probe (paper §4.6)",
        "",
        md.read_text().strip(),
        "",
        f"![probe]({_rel(demo.probe / 'probe.png', demo.out)})",
        "",
    ]


def _times_section(demo: Demo) -> list[str]:
    lines = ["## Stage times", "", "| stage | seconds |", "|---|---:|"]
    total = 0.0
    for mark in sorted(demo.marks.glob("*.json"), key=lambda p: p.stat().st_mtime):
        rec = read_json(mark, "Restore it, or run the demo again in a new output folder.")
        total += rec["seconds"]
        lines.append(f"| {rec['stage']} | {rec['seconds']:.0f} |")
    lines.append(f"| **total** | {total:.0f} |")
    return [*lines, ""]


def write_report(demo: Demo) -> Path:
    figures = demo.out / "figures"
    parts = [
        "# stamo_vla demo report",
        "",
        "Everything below was produced by `make demo` on this machine and is read from the run's output files. "
        "The VLA and StaMo models are tiny and random-init, trained for minutes: the numbers show that each stage "
        "works end to end, not paper-scale performance.",
        "",
        *_data_section(demo),
        *_stamo_section(demo, figures),
        *_finetune_section(demo, figures),
        *_eval_section(demo),
        *_probe_section(demo),
        *_times_section(demo),
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in package_versions().items() if v),
        "",
    ]
    path = demo.out / "REPORT.md"
    write_text_atomic(path, "\n".join(parts))
    print(f"[demo] report written to {path}")
    return path
