"""REPORT.md, study.json and figures of a policy study: every number is read from the run's own files.

The training run is the unit of replication. An arm's success is the mean of its runs' success rates, with a 95%
interval from the hierarchical bootstrap (seeds, then episodes within seeds); comparisons of arms use that
bootstrap, the exact permutation test over seeds and a logistic mixed model with a random intercept per run
(`stamo_vla.study.statistics`). A Wilson interval is given per run only: no interval pools episodes of several
runs. Nothing here is typed by hand: a stage that has not run shows as missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from stamo_vla.fileio import atomic_path, read_json, read_jsonl, write_json_atomic, write_text_atomic
from stamo_vla.libero.collect import MANIFEST_NAME, check_disjoint
from stamo_vla.study import statistics as S

if TYPE_CHECKING:
    from stamo_vla.study.policy_study import PolicyStudy

COMMAND = "stamo-vla study"
# (StaMo arm, the arm it is compared with), fixed before the results
# the stages whose output a study given ``inputs_from`` reads from the earlier study
REUSED_STAGES = ("collect", "stamo", "base", "targets")
COMPARISONS = (("state", "none"), ("state", "features"), ("state", "untrained"), ("motion", "none"))
N_BOOT = 10_000


def _read(path: Path) -> dict | None:
    return (
        read_json(path, "Restore it, or run the study again in a new output folder.")
        if path.is_file()
        else None
    )


def collect_evidence(study: PolicyStudy) -> dict:
    """Per dataset: successes, attempts and the disjointness check of its initial states."""
    out = {}
    for kind in ("finetune", "heldout", "base"):
        manifest = _read(study.data / study.dataset(kind) / MANIFEST_NAME)
        if manifest is None:
            continue
        records = manifest["episodes"].values()
        out[kind] = {
            **check_disjoint(manifest),
            "episodes": sum(r["success"] for r in records),
            "attempts": len(manifest["episodes"]),
            "render_resolution": manifest.get("render_resolution"),  # None: the manifest does not record it
        }
    return out


def episode_records(eval_dir: Path) -> list[dict] | None:
    """Every episode record of a finished evaluation, as written (fields a newer harness adds included), the first
    record of each episode; episodes that ended in an error are left out, as the harness leaves them out of its
    success rate. None while the evaluation's summary.json is missing."""
    from stamo_vla.libero.results import SUMMARY_JSON, ResultsStore

    if not (eval_dir / SUMMARY_JSON).is_file():
        return None
    raw = [r for f in ResultsStore(eval_dir).files() for r in read_jsonl(f)]
    raw = raw or read_jsonl(eval_dir / "episodes.jsonl")  # the copy kept with committed results
    seen: dict[tuple, dict] = {}
    for r in raw:
        seen.setdefault((r["suite"], r["task_id"], r["init_index"]), r)
    return [r for r in seen.values() if not r.get("error")]


def standard_records(study: PolicyStudy, arm: str, seed: int) -> list[dict] | None:
    """A run's standard episodes (evaluated tasks, first trials_per_task initial states), by task and state.

    Args:
        study: the study.
        arm: the run's arm.
        seed: the run's seed.
    """
    records = episode_records(study.evals / study.run_id(arm, seed) / "standard")
    if records is None:
        return None
    c = study.cfg
    keep = [
        r
        for r in records
        if r["suite"] == c.suite and r["task_id"] in c.eval_task_ids and r["init_index"] < c.trials_per_task
    ]
    return sorted(keep, key=lambda r: (r["task_id"], r["init_index"]))


def standard_outcomes(study: PolicyStudy, arm: str, seed: int) -> list[int] | None:
    """0/1 successes of a run's standard evaluation, in the order of `standard_records`.

    Args:
        study: the study.
        arm: the run's arm.
        seed: the run's seed.
    """
    records = standard_records(study, arm, seed)
    return None if records is None else [int(bool(r["success"])) for r in records]


def _per_task(records: list[dict]) -> dict[str, dict]:
    """Per task: successes, episodes and the mean steps of the failed episodes (what a collapsed run does)."""
    out: dict[str, dict] = {}
    for r in records:
        row = out.setdefault(str(r["task_id"]), {"successes": 0, "episodes": 0, "failed_steps": []})
        row["successes"] += int(bool(r["success"]))
        row["episodes"] += 1
        if not r["success"]:
            row["failed_steps"].append(r["steps"])
    for row in out.values():
        steps = row.pop("failed_steps")
        row["mean_failed_steps"] = sum(steps) / len(steps) if steps else None
    return out


def perturbed_outcomes(study: PolicyStudy, arm: str, seed: int) -> dict[str, list[int]] | None:
    """0/1 successes of a run's perturbed evaluation per perturbation family (the record's ``family`` where the
    harness writes one, else its suite), over the evaluated tasks: a record's ``base_task_id`` (the base task it
    perturbs) where written, else its task id (the LIBERO-PRO spatial suites list the tasks in the base order).

    Args:
        study: the study.
        arm: the run's arm.
        seed: the run's seed.
    """
    records = episode_records(study.evals / study.run_id(arm, seed) / "perturbed")
    if records is None:
        return None
    families: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r["suite"], r["task_id"], r["init_index"])):
        base_task = r.get("base_task_id")
        if (r["task_id"] if base_task is None else base_task) not in study.cfg.eval_task_ids:
            continue
        if r["init_index"] < study.cfg.trials_per_task:
            families.setdefault(r.get("family") or r["suite"], []).append(int(bool(r["success"])))
    return families


def run_results(study: PolicyStudy, arm: str, seed: int) -> dict:
    """Training, held-out and evaluation numbers of one run (missing parts are None).

    Args:
        study: the study.
        arm: the run's arm.
        seed: the run's seed.
    """
    from stamo_vla.study.heldout import HELDOUT_METRICS

    name = study.run_id(arm, seed)
    run = study.finetune_root / name
    records = standard_records(study, arm, seed)
    standard = None if records is None else [int(bool(r["success"])) for r in records]
    perturbed = perturbed_outcomes(study, arm, seed)
    flat = [x for v in (perturbed or {}).values() for x in v]
    return {
        "arm": arm,
        "seed": seed,
        "final_train": _read(run / "final_metrics.json"),
        "heldout": _read(run / HELDOUT_METRICS),
        "standard": S.run_summary(standard) if standard else None,
        "standard_outcomes": standard,
        "standard_tasks": _per_task(records or []),
        "perturbed": S.run_summary(flat) if flat else None,
        "perturbed_families": {k: S.run_summary(v) for k, v in (perturbed or {}).items()},
        "perturbed_outcomes": flat or None,
        "collapsed": None if not standard else sum(standard) / len(standard) < study.cfg.collapse_threshold,
        "seconds": study.run_seconds().get(name),
    }


def _arm_runs(runs: list[dict], arm: str, key: str) -> dict[int, list[int]]:
    return {r["seed"]: r[key] for r in runs if r["arm"] == arm and r[key]}


def arm_summaries(study: PolicyStudy, runs: list[dict]) -> dict[str, dict | None]:
    """Per arm: runs, mean standard and perturbed success with seed-level intervals, collapse, held-out L1."""
    out: dict[str, dict | None] = {}
    for arm in study.cfg.primary_arms + study.cfg.secondary_arms:
        standard = _arm_runs(runs, arm, "standard_outcomes")
        if not standard:
            out[arm] = None
            continue
        perturbed = _arm_runs(runs, arm, "perturbed_outcomes")
        l1 = [
            r["heldout"]["action_l1"]
            for r in runs
            if r["arm"] == arm and (r["heldout"] or {}).get("action_l1")
        ]
        out[arm] = {
            "standard": S.arm_bootstrap(standard, N_BOOT),
            "perturbed": S.arm_bootstrap(perturbed, N_BOOT) if perturbed else None,
            "collapse": S.collapse(standard, study.cfg.collapse_threshold),
            "heldout_action_l1": sum(l1) / len(l1) if l1 else None,
        }
    return out


VERDICT_RULE = (
    "An arm is said to help (or hurt) only where the seed-level 95% bootstrap interval of the difference excludes 0 "
    "and the exact permutation test over seeds agrees (p < 0.05); with few seeds the bootstrap has few distinct "
    "resamples and its interval is too narrow, while the permutation test cannot go below 2/2^n for n paired seeds "
    "(n < 6 never decides)."
)


def verdict(arm: str, ci: tuple[float, float], p: float, alpha: float = 0.05) -> str:
    """The verdict the fixed rule (`VERDICT_RULE`) gives one comparison of `arm` against another.

    Args:
        arm: the arm compared.
        ci: the confidence interval of its difference in mean success to the other arm.
        p: the permutation test's p-value.
        alpha: the significance level.
    """
    if p < alpha and ci[0] > 0:
        return f"`{arm}` helps"
    if p < alpha and ci[1] < 0:
        return f"`{arm}` hurts"
    if ci[0] > 0 or ci[1] < 0:
        return f"not decided: the interval excludes 0 but the permutation test does not agree (p = {p:.3f})"
    return "not decided: the interval covers 0"


def comparisons(runs: list[dict], arms: dict[str, dict | None]) -> list[dict]:
    """Every fixed comparison whose two arms have evaluated runs: standard (bootstrap, permutation, mixed model),
    perturbed (bootstrap), collapse (Fisher), and the verdict the standard interval supports."""
    from stamo_vla.study.policy_study_config import arm_parts

    # the fixed comparisons of targets, then every arm trained under another precision against its float32 arm
    precision = [(a, arm_parts(a)[0]) for a in arms if arm_parts(a)[1] is not None]
    out = []
    for a, b in (*COMPARISONS, *precision):
        if arms.get(a) is None or arms.get(b) is None:
            continue
        sa, sb = _arm_runs(runs, a, "standard_outcomes"), _arm_runs(runs, b, "standard_outcomes")
        result = {"a": a, "b": b, "seeds_a": sorted(sa), "seeds_b": sorted(sb), **S.compare(sa, sb, N_BOOT)}
        pa, pb = _arm_runs(runs, a, "perturbed_outcomes"), _arm_runs(runs, b, "perturbed_outcomes")
        result["perturbed"] = S.hierarchical_bootstrap(pa, pb, N_BOOT) if pa and pb else None
        result["collapse_fisher_p"] = S.collapse_fisher(arms[a]["collapse"], arms[b]["collapse"])
        result["verdict"] = verdict(a, result["bootstrap"]["ci"], result["permutation"]["p"])
        out.append(result)
    return out


def stage_times(study) -> dict[str, dict]:
    """Each stage's seconds summed over the calls that worked on it, finished stages and the running one."""
    times = {}
    for path in sorted(study.marks.glob("*.json")) + sorted(study.marks.glob("*.elapsed")):
        rec = read_json(path, "Restore it, or run the study again in a new output folder.")
        # marks written before calls were counted hold only the call that finished the stage
        times[path.name.split(".")[0]] = {
            "seconds": rec["seconds"],
            "calls": rec.get("calls"),
            "finished": path.suffix == ".json",
        }
    return times


def _stages_by_version(starts: list[dict]) -> dict[str, list[str]]:
    """The stages of `starts` (stage-call start records) grouped by the code version each call ran from."""
    from stamo_vla.study.stages import version_key

    versions: dict[str, list[str]] = {}
    for c in starts:
        stages = versions.setdefault(version_key(c), [])
        if c["stage"] not in stages:
            stages.append(c["stage"])
    return versions


def provenance(study: PolicyStudy) -> dict:
    """The code versions and machines of every stage call, and whether the study mixes code versions."""
    from stamo_vla.study.stages import CALLS_NAME

    starts = [c for c in study.stage_calls() if c.get("event") == "start"]
    versions = _stages_by_version(starts)
    machines = []
    for c in starts:
        if c.get("machine") and c["machine"] not in machines:
            machines.append(c["machine"])
    started = {c["stage"] for c in starts}
    unrecorded = [m.stem for m in sorted(study.marks.glob("*.json")) if m.stem not in started]
    if unrecorded:  # finished before stage calls recorded their commit
        versions["unrecorded"] = unrecorded
    run_versions = {k for k, stages in versions.items() if set(stages) - set(study.ANY_COMMIT)}
    out = {"versions": versions, "mixed": len(run_versions) > 1, "machines": machines, "calls": len(starts)}
    if study.cfg.inputs_from:  # the stages whose output this study reads from an earlier study
        reused = read_jsonl(study.inputs / ".stages" / CALLS_NAME)
        starts = [c for c in reused if c.get("event") == "start" and c["stage"] in REUSED_STAGES]
        out["inputs_from"] = {"output_dir": str(study.inputs), "versions": _stages_by_version(starts)}
    return out


def config_differences(study: PolicyStudy) -> list[str]:
    """Fields whose value in this (report) call differs from the config a finished stage recorded in its mark."""
    import dataclasses

    now = dataclasses.asdict(study.cfg)
    differ = set()
    for mark in study.marks.glob("*.json"):
        recorded = (
            read_json(mark, "Restore it, or run the study again in a new output folder.").get("config") or {}
        )
        differ |= {
            k for k, v in recorded.items() if k not in ("stages", "allow_mixed_commits") and now.get(k) != v
        }
    return sorted(differ)


def keep_videos(study: PolicyStudy, runs: list[dict]) -> dict[str, list[str]]:
    """Copy the first ``videos_per_run`` failure videos of each run's evaluations to <out>/videos/<run>/."""
    kept: dict[str, list[str]] = {}
    for r in runs:
        name = study.run_id(r["arm"], r["seed"])
        for kind in ("standard", "perturbed"):
            source = study.evals / name / kind / "videos"
            videos = sorted(source.rglob("*success=False*.mp4"))[: study.cfg.videos_per_run]
            for video in videos:
                target = study.out / "videos" / name / kind / video.name
                if not target.is_file():
                    with atomic_path(target) as tmp:
                        shutil.copyfile(video, tmp)
                kept.setdefault(name, []).append(str(target.relative_to(study.out)))
    return kept


def write_report(study: PolicyStudy) -> Path:
    """Write <out>/REPORT.md, <out>/study.json and the figures; returns the report path."""
    import dataclasses

    from stamo_vla.study.policy_report_md import markdown
    from stamo_vla.study.policy_study import POWER_NAME, REPRODUCE_NAME

    runs = [run_results(study, arm, seed) for arm, seed in study.planned_runs()]
    arms = arm_summaries(study, runs)
    with_l1 = [r for r in runs if r["standard"] and (r["heldout"] or {}).get("action_l1") is not None]
    data = {
        "commands": [" ".join(argv) for argv in study.commands()] or [COMMAND],
        "config": dataclasses.asdict(study.cfg),
        "provenance": provenance(study),
        "config_differences": config_differences(study),
        "stage_seconds": stage_times(study),
        "power": _read(study.out / POWER_NAME),
        "collection": collect_evidence(study),
        "base": _read(study.base_run / "final_metrics.json"),
        "runs": runs,
        "arms": arms,
        "comparisons": comparisons(runs, arms),
        "heldout_l1_vs_success": S.rank_correlation(
            [r["heldout"]["action_l1"] for r in with_l1], [r["standard"]["success_rate"] for r in with_l1]
        ),
        "reproduce": _read(study.out / REPRODUCE_NAME),
        "videos": keep_videos(study, runs),
    }
    write_json_atomic(study.out / "study.json", data)
    figures = _figures(study, runs)
    path = study.out / "REPORT.md"
    write_text_atomic(path, markdown(study, data, figures))
    return path


def _figures(study: PolicyStudy, runs: list[dict]) -> list[str]:
    """The seed dot plot and the training curves, where there is something to draw; their file names."""
    from stamo_vla.study.policy_plots import plot_seeds, plot_training_curves

    names = []
    if any(r["standard"] for r in runs):
        plot_seeds(study, runs, study.out / "seeds.png")
        names.append("seeds.png")
    if plot_training_curves(study, runs, study.out / "curves.png"):
        names.append("curves.png")
    return names
