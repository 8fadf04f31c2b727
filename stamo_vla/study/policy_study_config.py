"""The policy study's config: its stages, its arms (an adapter target, optionally trained under bf16) and every
option of `stamo-vla study` (`stamo_vla.study.policy_study`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_choice, check_positive_int

STAGES = ("collect", "stamo", "base", "targets", "pilot", "power", "runs", "reproduce", "report")
# fine-tuning arms: adapter.target values (none = plain LoRA), each optionally trained under another precision:
# `<target>+bf16` is the same run with bf16 autocast (`--mixed_precision bf16`), an arm of the precision check
ARMS = ("none", "features", "untrained", "state", "motion")
PRECISIONS = ("bf16",)
# arms with an auxiliary target, and the cache each reads: state and motion share the StaMo-state cache at the
# datasets' default place (<data>/<dataset>/stamo_targets); the others have a cache root of their own
TARGET_CACHE = {"state": "state", "motion": "state", "untrained": "untrained", "features": "features"}
# arms whose target is made of a StaMo checkpoint's encoder (`--stamo_path` given)
STAMO_ARMS = ("state", "motion", "untrained")


@dataclass
class PolicyStudyConfig:
    """The CPU policy study (defaults: the small two-arm study on libero_spatial tasks 0 and 1)."""

    # Folder of every stage's output and of REPORT.md.
    output_dir: str = "runs/study"
    # LIBERO suite of every task below.
    suite: str = "libero_spatial"
    # Evaluated tasks: fine-tuning data and the benchmark evaluation.
    eval_task_ids: list[int] = field(default_factory=lambda: [0, 1])
    # Tasks of the base training data (disjoint from eval_task_ids: the base has never seen the evaluated tasks).
    base_task_ids: list[int] = field(default_factory=lambda: [2, 3, 6, 7, 8, 9])
    # Successful demonstrations per evaluated task (fine-tuning), per evaluated task (held-out), per base task.
    finetune_episodes: int = 40
    heldout_episodes: int = 4
    base_episodes: int = 8
    # Seed of the fresh placements and controller noise of the collection (the held-out data uses seed + 1).
    collect_seed: int = 1
    # Simulator worker processes (collection and evaluation).
    num_workers: int = 2
    # Existing StaMo checkpoint (a StaMoAutoencoder directory) for the targets; None = pretrain the tiny preset.
    stamo_path: str | None = None
    # StaMo pretraining preset and steps (None: the preset's own), used when stamo_path is None.
    stamo_preset: str = "tiny"
    stamo_steps: int | None = None
    # Base training: model size, steps, batch size.
    base_model: str = "small"
    base_steps: int = 2000
    base_batch_size: int = 32
    # Fine-tuning preset (stamo_vla/presets/finetune_<name>.yaml), steps and batch size of every run.
    finetune_preset: str = "study_small"
    finetune_steps: int = 2500
    finetune_batch_size: int = 16
    # Primary arms (adapter.target; none = plain LoRA): piloted, then given the seeds the power stage asks for.
    primary_arms: list[str] = field(default_factory=lambda: ["none", "state"])
    # Secondary arms: the seeds the budget leaves after the primary arms (at most the primary arms' number).
    secondary_arms: list[str] = field(default_factory=list)
    # Seeds 0 .. pilot_seeds-1 of every primary arm make the pilot.
    pilot_seeds: int = 4
    # Power calculation: difference of mean run success to detect, two-sided alpha, power, most seeds per arm.
    effect: float = 0.15
    alpha: float = 0.05
    power: float = 0.8
    max_seeds: int = 40
    # Wall-time budget of the whole study in hours (every stage, summed over calls); sizes the secondary arms.
    budget_hours: float = 16.0
    # Evaluation: the first trials_per_task of each task's 50 fixed initial states (identical for every run).
    trials_per_task: int = 25
    # LIBERO-PRO suites holding perturbed variants of the evaluated tasks ([] = standard evaluation only).
    perturbed_suites: list[str] = field(default_factory=list)
    # A run below this standard success rate has collapsed (an endpoint of its own).
    collapse_threshold: float = 0.10
    # Failure videos kept per run (and evaluation) beside the report.
    videos_per_run: int = 3
    # Camera render size of collection and evaluation alike (the benchmark renders 256 px; the policy sees 112).
    env_resolution: int = 128
    # Output folder of an earlier study whose data, StaMo model, base and target caches this study reads instead of
    # making its own (its collect, stamo, base and targets stages must have finished there; nothing is written
    # into it). None: this study makes its own.
    inputs_from: str | None = None
    # Run stages from a commit other than the earlier stages' (the report then says the study is mixed).
    allow_mixed_commits: bool = False
    # Stages to run, in order (default: all).
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        for stage in self.stages:
            check_choice("stages entry", stage, STAGES)
        for arm in self.primary_arms + self.secondary_arms:
            target, precision = arm_parts(arm)
            check_choice("primary_arms/secondary_arms entry", target, ARMS)
            if precision is not None:
                check_choice(f"primary_arms/secondary_arms entry {arm!r}: precision", precision, PRECISIONS)
        arms = self.primary_arms + self.secondary_arms
        if len(set(arms)) != len(arms):
            raise ValueError(
                f"primary_arms={self.primary_arms}, secondary_arms={self.secondary_arms}: an arm is listed twice"
            )
        if self.inputs_from and Path(self.inputs_from).resolve() == Path(self.output_dir).resolve():
            raise ValueError(
                f"inputs_from={self.inputs_from} is this study's own output_dir; name the earlier study's folder, "
                "or leave inputs_from unset"
            )
        overlap = sorted(set(self.eval_task_ids) & set(self.base_task_ids))
        if overlap:
            raise ValueError(
                f"base_task_ids={self.base_task_ids} and eval_task_ids={self.eval_task_ids} share tasks {overlap}; "
                "the base must not train on the evaluated tasks"
            )
        if not self.eval_task_ids or len(self.primary_arms) < 2:
            raise ValueError(
                f"eval_task_ids={self.eval_task_ids}, primary_arms={self.primary_arms}: need at least one task and "
                "two primary arms to compare"
            )
        if self.stamo_steps is not None:
            check_positive_int("stamo_steps", self.stamo_steps)
        for name in ("finetune_episodes", "heldout_episodes", "base_episodes", "num_workers", "base_steps"):
            check_positive_int(name, getattr(self, name))
        for name in (
            "base_batch_size",
            "finetune_steps",
            "finetune_batch_size",
            "trials_per_task",
            "max_seeds",
        ):
            check_positive_int(name, getattr(self, name))
        check_positive_int("videos_per_run", self.videos_per_run, allow_zero=True)
        if not isinstance(self.pilot_seeds, int) or not 2 <= self.pilot_seeds <= self.max_seeds:
            raise ValueError(
                f"pilot_seeds={self.pilot_seeds} must be an integer in [2, max_seeds={self.max_seeds}]: the spread "
                "between seeds needs two seeds per arm"
            )
        for name in ("effect", "alpha", "power", "collapse_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1)")
        if not 0 < self.budget_hours < 1000:
            raise ValueError(f"budget_hours={self.budget_hours} must be a positive number of hours (< 1000)")

    @property
    def pilot_runs(self) -> list[tuple[str, int]]:
        """The pilot's runs as (arm, seed), seed-major: every primary arm of a seed finishes before the next seed."""
        return [(arm, seed) for seed in range(self.pilot_seeds) for arm in self.primary_arms]


def arm_parts(arm: str) -> tuple[str, str | None]:
    """(adapter.target, training precision or None for float32) of an arm: ``state+bf16`` -> (state, bf16)."""
    target, plus, precision = arm.partition("+")
    return target, (precision if plus else None)
