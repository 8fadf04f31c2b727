"""REPORT.md and study.json of a policy study: every number is read from the run's own files.

Success rates carry 95% Wilson intervals (per run, and pooled over the seeds of an arm); arms are also
compared by the mean ± std of their per-seed success rates. Nothing here is typed by hand: a stage that has
not run shows as missing.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from stamo_vla.fileio import read_jsonl, write_json_atomic
from stamo_vla.libero.collect import MANIFEST_NAME, check_disjoint
from stamo_vla.libero.results import wilson_interval
from stamo_vla.viz.curves import plot_curves, series

if TYPE_CHECKING:
    from stamo_vla.study.policy_study import PolicyStudy

TARGET_SUCCESS = 0.60  # the study's bar: mean success over the evaluated tasks
COMMAND = "stamo-vla study"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _wilson(successes: int, n: int) -> tuple[float, float]:
    return wilson_interval(successes, n)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def collect_evidence(study: PolicyStudy) -> dict:
    """Per dataset: successes, attempts and the disjointness check of its initial states."""
    out = {}
    for kind in ("finetune", "base"):
        manifest = _read(study.data / study.dataset(kind) / MANIFEST_NAME)
        if manifest is None:
            continue
        records = manifest["episodes"].values()
        out[kind] = {
            **check_disjoint(manifest),
            "episodes": sum(r["success"] for r in records),
            "attempts": len(manifest["episodes"]),
            "render_resolution": manifest.get("render_resolution", 256),
        }
    return out


def run_results(study: PolicyStudy, arm: str, seed: int) -> dict:
    """Training, held-out and benchmark numbers of one fine-tuning run (missing parts are None)."""
    from stamo_vla.study.heldout import HELDOUT_METRICS

    name = study.run_id(arm, seed)
    run = study.finetune_root / name
    summary = _read(study.evals / name / "summary.json")
    evaluation = None
    if summary is not None:
        overall = summary["overall"]
        tasks = summary["suites"].get(study.cfg.suite, {}).get("tasks", {})
        evaluation = {
            "successes": overall["successes"],
            "episodes": overall["episodes"],
            "success_rate": overall["success_rate"],
            "ci95": _wilson(overall["successes"], overall["episodes"]),
            "tasks": {
                t: {k: row[k] for k in ("successes", "episodes", "success_rate")} for t, row in tasks.items()
            },
            "missing_episodes": summary.get("missing_episodes", 0),
        }
    return {
        "arm": arm,
        "seed": seed,
        "final_train": _read(run / "final_metrics.json"),
        "heldout": _read(run / HELDOUT_METRICS),
        "eval": evaluation,
    }


def arm_summary(runs: list[dict]) -> dict | None:
    """Pooled Wilson interval and mean ± std over seeds of an arm's finished evaluations."""
    done = [r["eval"] for r in runs if r["eval"] is not None]
    if not done:
        return None
    wins, n = sum(e["successes"] for e in done), sum(e["episodes"] for e in done)
    mean, std = _mean_std([e["success_rate"] for e in done])
    heldout = [r["heldout"]["action_l1"] for r in runs if r["heldout"] and "action_l1" in r["heldout"]]
    return {
        "seeds": len(done),
        "pooled_success_rate": wins / n,
        "pooled_ci95": _wilson(wins, n),
        "seed_mean": mean,
        "seed_std": std,
        "heldout_action_l1": _mean_std(heldout) if heldout else None,
    }


def _fmt_rate(rate: float, ci: tuple[float, float]) -> str:
    return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _verdict(study: PolicyStudy, runs: list[dict], arms: dict[str, dict | None]) -> list[str]:
    """The headline lines: the best arm against the bar, and each StaMo arm against plain LoRA on the seeds that
    both have evaluated (a seed evaluated in one arm only is compared with nothing)."""
    lines = []
    finished = {a: s for a, s in arms.items() if s is not None}
    if not finished:
        return ["No evaluation has finished yet."]
    best = max(finished, key=lambda a: finished[a]["pooled_success_rate"])
    rate = finished[best]["pooled_success_rate"]
    reached = "reaches" if rate >= TARGET_SUCCESS else "does not reach"
    lines.append(
        f"- Best arm `{best}`: {_fmt_rate(rate, finished[best]['pooled_ci95'])} pooled over its "
        f"{finished[best]['seeds']} evaluated seed(s); it {reached} the {100 * TARGET_SUCCESS:.0f}% bar."
    )
    evals = {(r["arm"], r["seed"]): r["eval"] for r in runs if r["eval"] is not None}
    for arm in study.cfg.arms:
        if arm == "none":
            continue
        paired = [seed for seed in study.cfg.seeds if (arm, seed) in evals and ("none", seed) in evals]
        if not paired:
            lines.append(f"- StaMo `{arm}` vs plain LoRA: no seed is evaluated in both arms yet.")
            continue
        per_seed = [
            evals[(arm, seed)]["success_rate"] - evals[("none", seed)]["success_rate"] for seed in paired
        ]
        listed = ", ".join(f"seed {seed} {100 * d:+.1f}" for seed, d in zip(paired, per_seed))
        partial = (
            ""
            if len(paired) == len(study.cfg.seeds)
            else f" (partial: seeds {paired} of {study.cfg.seeds} are evaluated in both arms)"
        )
        if len(paired) < 2:
            word = "one seed cannot separate an arm from the seed-to-seed spread"
        else:
            mean, std = _mean_std(per_seed)
            same_sign = all(d > 0 for d in per_seed) or all(d < 0 for d in per_seed)
            word = f"{100 * mean:+.1f} ± {100 * std:.1f} over seeds; " + (
                "every seed agrees on the sign" if same_sign else "the seeds disagree on the sign"
            )
        lines.append(f"- StaMo `{arm}` vs plain LoRA, per seed: {listed} points ({word}){partial}.")
    return lines


def _curves(study: PolicyStudy, runs: list[dict], path: Path) -> None:
    panels: dict[str, list] = {"train/loss_action (L1)": [], "train/loss_future (StaMo)": []}
    for r in runs:
        records = read_jsonl(study.finetune_root / study.run_id(r["arm"], r["seed"]) / "metrics.jsonl")
        label = study.run_id(r["arm"], r["seed"])
        panels["train/loss_action (L1)"].append((label, *series(records, "train/loss_action")))
        panels["train/loss_future (StaMo)"].append((label, *series(records, "train/loss_future")))
    base = read_jsonl(study.base_run / "metrics.jsonl")
    panels["base train/loss (tokens)"] = [("base", *series(base, "train/loss"))]
    panels = {k: [line for line in v if line[1]] for k, v in panels.items()}
    plot_curves({k: v for k, v in panels.items() if v}, path)


def stage_times(study) -> dict[str, dict]:
    """Each stage's seconds summed over the calls that worked on it, finished stages and the running one."""
    times = {}
    for path in sorted(study.marks.glob("*.json")) + sorted(study.marks.glob("*.elapsed")):
        rec = json.loads(path.read_text())
        # marks written before calls were counted hold only the call that finished the stage
        times[path.name.split(".")[0]] = {
            "seconds": rec["seconds"],
            "calls": rec.get("calls"),
            "finished": path.suffix == ".json",
        }
    return times


def _fmt_times(times: dict[str, dict]) -> str:
    if not times:
        return "none"
    parts = []
    for name, t in times.items():
        note = []
        if t["calls"] is None:
            note.append("finishing call only")
        elif t["calls"] > 1:
            note.append(f"{t['calls']} calls")
        if not t["finished"]:
            note.append("running")
        parts.append(f"{name} {t['seconds'] / 60:.1f} min" + (f" ({', '.join(note)})" if note else ""))
    total = sum(t["seconds"] for t in times.values()) / 60
    return ", ".join(parts) + f"; total {total:.1f} min, each stage summed over the calls that worked on it."


def write_report(study: PolicyStudy) -> Path:
    """Write <out>/REPORT.md, <out>/study.json and <out>/curves.png; returns the report path."""
    import dataclasses

    cfg = study.cfg
    runs = [run_results(study, arm, seed) for arm, seed in cfg.runs]
    arms = {arm: arm_summary([r for r in runs if r["arm"] == arm]) for arm in cfg.arms}
    times = stage_times(study)
    commands = [" ".join(argv) for argv in study.commands()] or [COMMAND]
    data = {
        "command": commands[0],
        "commands": commands,
        "config": dataclasses.asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "stage_seconds": times,
        "collection": collect_evidence(study),
        "base": _read(study.base_run / "final_metrics.json"),
        "runs": runs,
        "arms": arms,
    }
    write_json_atomic(study.out / "study.json", data)
    if any((study.finetune_root / study.run_id(a, s) / "metrics.jsonl").is_file() for a, s in cfg.runs):
        _curves(study, runs, study.out / "curves.png")
    path = study.out / "REPORT.md"
    path.write_text(_markdown(study, data))
    return path


def _markdown(study: PolicyStudy, data: dict) -> str:
    cfg = study.cfg
    lines = [f"# Policy study: {cfg.suite} tasks {cfg.eval_task_ids}", ""]
    lines += [
        f"Produced by `{data['command']}` (config in `study.json`) on {data['machine']['cpus']} CPU cores."
    ]
    if len(data["commands"]) > 1:
        same = len(set(data["commands"])) == 1
        how = "with the same command" if same else "(every command line is in `study.json`)"
        lines.append(f"It was resumed {len(data['commands']) - 1} time(s) after interruptions {how}.")
    lines.append("")
    lines += ["## Verdict", "", *_verdict(study, data["runs"], data["arms"]), ""]
    lines += ["## Demonstrations (fresh initial states, never the 50 test states)", ""]
    lines += ["| data | tasks | episodes | attempts | render px | min distance to a test state | disjoint |"]
    lines += ["|---|---|---:|---:|---:|---:|---|"]
    for kind, ev in data["collection"].items():
        tasks = cfg.eval_task_ids if kind == "finetune" else cfg.base_task_ids
        dist = "n/a" if ev["min_distance"] is None else f"{ev['min_distance']:.4f}"
        row = (
            f"| {kind} | {tasks} | {ev['episodes']} | {ev['attempts']} | {ev['render_resolution']} | {dist} |"
        )
        lines.append(f"{row} {ev['disjoint']} |")
    base = data["base"] or {}
    lines += ["", "## Base policy (full-parameter training, token actions, base tasks only)", ""]
    if base:
        acc = base.get("action_accuracy", float("nan"))
        lines.append(
            f"{base.get('step')} steps; final train loss {base.get('loss', float('nan')):.3f}, token accuracy {acc:.3f}."
        )
    else:
        lines.append("Not trained yet.")
    lines += ["", "## Fine-tuned policies on the benchmark (upstream protocol, 95% Wilson intervals)", ""]
    lines += [
        f"Protocol: the first {cfg.trials_per_task} of each task's fixed initial states, the suite's step budget, "
        "10 wait steps, success = the env's `done`. Departures, for CPU cost: cameras render at "
        f"{cfg.env_resolution} px (the benchmark: 256), only on the steps whose observation the policy reads "
        "(`--render policy`; no outcome changes), and the policy sees 112 px.",
        "",
    ]
    lines += [
        "| arm | seed | success | per task | held-out action L1 | held-out StaMo loss |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in data["runs"]:
        ev, ho = r["eval"], r["heldout"] or {}
        success = _fmt_rate(ev["success_rate"], ev["ci95"]) if ev else "not evaluated"
        per_task = (
            ", ".join(f"{t}: {v['successes']}/{v['episodes']}" for t, v in ev["tasks"].items()) if ev else ""
        )
        l1 = f"{ho['action_l1']:.4f}" if "action_l1" in ho else "-"
        future = f"{ho['loss_future']:.4f}" if "loss_future" in ho else "-"
        lines.append(f"| {r['arm']} | {r['seed']} | {success} | {per_task} | {l1} | {future} |")
    lines += [
        "",
        "| arm | seeds | pooled success | mean ± std over seeds | held-out L1 mean ± std |",
        "|---|---:|---|---|---|",
    ]
    for arm, s in data["arms"].items():
        if s is None:
            lines.append(f"| {arm} | 0 | not evaluated | | |")
            continue
        l1 = "-" if s["heldout_action_l1"] is None else "{:.4f} ± {:.4f}".format(*s["heldout_action_l1"])
        pooled = _fmt_rate(s["pooled_success_rate"], s["pooled_ci95"])
        spread = f"{100 * s['seed_mean']:.1f} ± {100 * s['seed_std']:.1f}%" if s["seeds"] > 1 else "one seed"
        lines.append(f"| {arm} | {s['seeds']} | {pooled} | {spread} | {l1} |")
    if (study.out / "curves.png").is_file():
        lines += ["", "![training curves](curves.png)"]
    lines += [
        "",
        "## Stage times",
        "",
        _fmt_times(data["stage_seconds"]),
    ]
    lines += ["", "Rollout videos of failed episodes: `eval/<arm>_seed<k>/videos/`.", ""]
    return "\n".join(lines)
