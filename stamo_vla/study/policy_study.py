"""`stamo-vla study`: is StaMo a better auxiliary target than none, than a non-StaMo target, than a random encoder?
A controlled comparison of fine-tuning arms on one base, with seeds sized by power, trained on a 2-core CPU.

    nohup stamo-vla study --config targets > study.log 2>&1 &   # ~16 h on 2 idle cores; rerun the same to resume
    stamo-vla study --config targets --stages '[report]'         # rewrite the report from the run's files
    stamo-vla study --config targets --stages '[reproduce]'      # retrain a collapsed run, compare tensors

Stages (each skipped when finished, each resuming its own work when interrupted; every call records the git commit
it ran from, and the study refuses to mix commits unless ``--allow_mixed_commits true``):

1. collect    scripted demonstrations from *fresh* initial states (never the benchmark's 50 test states; the
              distance of every start to the nearest test state is recorded and checked): the evaluated tasks
              (fine-tuning data), the same tasks again with another seed (the held-out data: ``heldout_episodes``
              per task, so held-out metrics cover every evaluated task) and other tasks of the suite (base data)
2. stamo      a tiny StaMo pretrained on the fine-tuning frames (or ``stamo_path``)
3. base       full-parameter training of the small OpenVLA-architecture policy on the base tasks, token actions:
              the stand-in for openvla-7b
   targets    the target cache of every arm's target kind, for the fine-tuning and the held-out data
4. pilot      the first ``pilot_seeds`` seeds of every primary arm, each a full run: LoRA fine-tuning with the
              L1 chunk head (``--adapter.target <arm>``), held-out action L1 and target loss, the standard
              evaluation and the perturbed one
5. power      the seeds per arm for an ``effect`` difference (`stamo_vla.study.power`), written to power.json
              before any further run starts
6. runs       the remaining runs of power.json: primary arms seed-major, then the secondary arms
7. reproduce  a from-scratch retrain of the first collapsed run, its adapter tensors compared with the first run's
8. report     REPORT.md, study.json, the seed dot plot and curves (`stamo_vla.study.policy_report`)

Evaluation: standard = the upstream protocol on the evaluated tasks (the first ``trials_per_task`` of the 50 fixed
initial states, identical for every run; the suite's step budget, 10 wait steps, success = the env's ``done``);
perturbed = the same tasks in ``perturbed_suites`` (LIBERO-PRO variants), through ``stamo-vla eval --suites``.
Departures from the benchmark, all for CPU cost: cameras rendered at ``env_resolution`` (128 px, the policy sees
112 px) instead of 256 px, in collection and evaluation alike; the policy is a 5M-parameter model of the OpenVLA
architecture; evaluation renders only the steps whose observation the policy reads (``--render policy``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_choice, check_positive_int, parse_config, resolve_preset
from stamo_vla.fileio import append_jsonl, read_json, read_jsonl, write_json_atomic
from stamo_vla.study.stages import StagedRun, code_version, stamo_vla_cli

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
POWER_NAME = "power.json"
REPRODUCE_NAME = "reproduce.json"
RUN_TIMES_NAME = "run_times.jsonl"


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


FINETUNE_DATASET = "finetune"
HELDOUT_DATASET = "heldout"
BASE_DATASET = "base"


class PolicyStudy(StagedRun):
    """Paths and stages of one study directory."""

    STAGES = STAGES
    NAME = "study"

    def __init__(self, cfg: PolicyStudyConfig):
        super().__init__(cfg, cfg.output_dir, cfg.stages)
        self.allow_mixed_commits = cfg.allow_mixed_commits
        # where the inputs of every run live: this study's folder, or the earlier study it reads them from
        self.inputs = Path(cfg.inputs_from) if cfg.inputs_from else self.out
        self.data = self.inputs / "data"
        self.stamo_run = self.inputs / "stamo"
        self.base_run = self.inputs / "base"
        self.finetune_root = self.out / "finetune"
        self.evals = self.out / "eval"
        self.reproduce_root = self.out / "reproduce"

    def dataset(self, kind: str) -> str:
        return f"{self.cfg.suite}_{kind}"

    @staticmethod
    def run_id(arm: str, seed: int) -> str:
        return f"{arm}_seed{seed}"

    def stamo_model(self) -> Path:
        if self.cfg.stamo_path:
            return Path(self.cfg.stamo_path)
        return self.latest_model(self.stamo_run, "stamo")

    def planned_runs(self) -> list[tuple[str, int]]:
        """The pilot's runs, then those of power.json (primary arms seed-major, then the secondary arms)."""
        runs = list(self.cfg.pilot_runs)
        plan = self.power_plan()
        if plan is not None:
            for group in (self.cfg.primary_arms, self.cfg.secondary_arms):
                seeds = sorted({s for arm in group for s in plan["seeds"].get(arm, [])})
                runs += [
                    (a, s)
                    for s in seeds
                    for a in group
                    if s in plan["seeds"].get(a, []) and (a, s) not in runs
                ]
        return runs

    def power_plan(self) -> dict | None:
        path = self.out / POWER_NAME
        return read_json(path, "Delete it and rerun the power stage.") if path.is_file() else None

    # ---------------------------------------------------------------- stages
    def reused(self, stage: str) -> bool:
        """True when `stage`'s output comes from ``inputs_from`` (checked finished there); False: run it here."""
        if not self.cfg.inputs_from:
            return False
        if not (self.inputs / ".stages" / f"{stage}.json").is_file():
            raise FileNotFoundError(
                f"inputs_from={self.cfg.inputs_from}: its {stage} stage has not finished (no "
                f"{self.inputs / '.stages' / (stage + '.json')}); finish that study's {stage} stage first, or leave "
                "inputs_from unset so this study makes its own inputs"
            )
        return True

    def stage_collect(self) -> None:
        if self.reused("collect"):
            return
        c = self.cfg
        for kind, tasks, episodes, seed in (
            (FINETUNE_DATASET, c.eval_task_ids, c.finetune_episodes, c.collect_seed),
            (HELDOUT_DATASET, c.eval_task_ids, c.heldout_episodes, c.collect_seed + 1),
            (BASE_DATASET, c.base_task_ids, c.base_episodes, c.collect_seed),
        ):
            args = ["--suite", c.suite, "--task_ids", _ids(tasks), "--episodes_per_task", str(episodes)]
            args += ["--num_workers", str(c.num_workers), "--seed", str(seed)]
            args += ["--data_root_dir", str(self.data), "--dataset_name", self.dataset(kind)]
            args += ["--init_states", "fresh", "--render_resolution", str(c.env_resolution)]
            self.run(stamo_vla_cli("collect", *args), f"collect_{kind}")

    def stage_stamo(self) -> None:
        import yaml

        c = self.cfg
        if not c.stamo_path and not self.reused("stamo"):  # a given checkpoint needs no pretraining
            preset = yaml.safe_load(resolve_preset(c.stamo_preset, prefix="pretrain_stamo_").read_text())
            preset["source"] = {
                "type": "rlds",
                "data_root_dir": str(self.data),
                "dataset_names": [self.dataset(FINETUNE_DATASET)],
                "cameras": ["image"],
                "frame_stride": 2,
            }
            config = self.out / "pretrain_stamo.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(preset))
            args = ["--config", str(config), "--run_dir", str(self.stamo_run)]
            if c.stamo_steps is not None:
                args += ["--max_steps", str(c.stamo_steps)]
            self.run(stamo_vla_cli("pretrain", *args), "stamo_pretrain")

    def stage_base(self) -> None:
        if self.reused("base"):
            return
        c = self.cfg
        args = ["--model", c.base_model, "--data.data_root_dir", str(self.data)]
        args += ["--data.dataset_names", f"[{self.dataset(BASE_DATASET)}]"]
        args += [
            "--data.image_size",
            "112" if c.base_model == "small" else "224",
            "--data.train_percent",
            "100",
        ]
        args += ["--run_dir", str(self.base_run), "--max_steps", str(c.base_steps)]
        args += ["--batch_size", str(c.base_batch_size), "--save_steps", str(max(1, c.base_steps // 8))]
        args += ["--tokenizer_datasets", f"[{self.dataset(FINETUNE_DATASET)}]"]  # words of every task prompt
        self.run(stamo_vla_cli("train-base", *args), "base")

    def cache_root(self, kind: str) -> Path | None:
        """The target cache root of a cache kind (None: the datasets' default place)."""
        return None if kind == "state" else self.inputs / "target_cache" / kind

    def cache_dir(self, kind: str, dataset: str) -> Path:
        """The target cache of a cache kind for one dataset."""
        from stamo_vla.data.target_cache import default_cache_dir

        root = self.cache_root(kind)
        return default_cache_dir(self.data, dataset) if root is None else root / dataset

    def stage_targets(self) -> None:
        """Every target cache the arms read, of the fine-tuning and the held-out data (after the base: the
        features target is made of the base's frozen backbone). Reused ones must hold every cache the arms read."""
        targets = {arm_parts(a)[0] for a in self.cfg.primary_arms + self.cfg.secondary_arms}
        kinds = sorted({TARGET_CACHE[t] for t in targets if t in TARGET_CACHE})
        if self.reused("targets"):
            self.check_reused_caches(kinds)
            return
        for kind in kinds:
            for dataset in (self.dataset(FINETUNE_DATASET), self.dataset(HELDOUT_DATASET)):
                args = ["--data_root_dir", str(self.data), "--dataset_name", dataset]
                if kind != "state":  # the StaMo-state cache is the command's default target
                    args += ["--target", kind, "--output_dir", str(self.cache_dir(kind, dataset))]
                if kind == "features":
                    args += ["--vla_path", str(self.base_run / "model")]
                else:
                    args += ["--stamo_path", str(self.stamo_model())]
                self.run(stamo_vla_cli("cache-targets", *args), f"cache_{kind}_{dataset}")

    def check_reused_caches(self, kinds: list[str]) -> None:
        """Every target cache of `kinds` exists in ``inputs_from`` (the earlier study may have had other arms)."""
        for kind in kinds:
            for dataset in (self.dataset(FINETUNE_DATASET), self.dataset(HELDOUT_DATASET)):
                where = self.cache_dir(kind, dataset)
                if not where.is_dir():
                    raise FileNotFoundError(
                        f"inputs_from={self.cfg.inputs_from} has no {kind} target cache of {dataset} ({where}): that "
                        f"study had no arm reading it; choose arms whose caches it holds, or leave inputs_from unset"
                    )

    def finetune_args(self, arm: str, seed: int, run_dir: Path | None = None) -> list[str]:
        """The ``stamo-vla finetune`` options of one run (into `run_dir`, default its place in the study).

        Args:
            arm: the run's arm.
            seed: the run's seed.
            run_dir: where the run writes (None: its place in the study).
        """
        c = self.cfg
        target, precision = arm_parts(arm)
        run_dir = run_dir or self.finetune_root / self.run_id(arm, seed)
        args = ["--config", c.finetune_preset]
        args += ["--vla_path", str(self.base_run / "model"), "--data.data_root_dir", str(self.data)]
        args += ["--data.dataset_names", f"[{self.dataset(FINETUNE_DATASET)}]", "--data.train_percent", "100"]
        args += ["--run_dir", str(run_dir), "--seed", str(seed), "--data.seed", str(seed)]
        args += ["--max_steps", str(c.finetune_steps), "--batch_size", str(c.finetune_batch_size)]
        args += [
            "--save_steps",
            str(max(1, c.finetune_steps // 5)),
            "--adapter.target",
            target,
            "--resume",
            "true",
        ]
        if precision is not None:
            args += ["--mixed_precision", precision]
        if target in TARGET_CACHE:
            args += ["--data.use_target_cache", "true"]
            root = self.cache_root(TARGET_CACHE[target])
            args += [] if root is None else ["--data.target_cache_root", str(root)]
        if target in STAMO_ARMS:
            args += ["--stamo_path", str(self.stamo_model())]
        return args

    def eval_args(self, arm: str, seed: int, suites: list[str], output_dir: Path) -> list[str]:
        """The ``stamo-vla eval`` options of one run on `suites` (the evaluated tasks of each).

        Args:
            arm: the run's arm.
            seed: the run's seed.
            suites: the suites evaluated.
            output_dir: where the evaluation writes.
        """
        c = self.cfg
        args = ["--policy.type", "adapter", "--policy.checkpoint", str(self.base_run / "model")]
        args += ["--policy.adapter_dir", str(self.finetune_root / self.run_id(arm, seed) / "adapter")]
        args += ["--policy.unnorm_key", self.dataset(FINETUNE_DATASET)]
        args += ["--suites", "[" + ",".join(suites) + "]"]
        args += ["--task_ids", _ids(c.eval_task_ids)]
        args += ["--num_trials_per_task", str(c.trials_per_task), "--num_workers", str(c.num_workers)]
        args += ["--env_resolution", str(c.env_resolution), "--center_crop", "false"]
        args += ["--video", "failures", "--render", "policy", "--progress", "false"]
        return args + ["--output_dir", str(output_dir)]

    def run_steps(self, arm: str, seed: int) -> list[tuple[str, Path, list[str]]]:
        """The steps of one run as (name, the file that marks it done, command)."""
        name = self.run_id(arm, seed)
        run = self.finetune_root / name
        heldout = ["--run_dir", str(run), "--dataset_name", self.dataset(HELDOUT_DATASET)]
        steps = [
            ("finetune", run / "adapter", stamo_vla_cli("finetune", *self.finetune_args(arm, seed))),
            ("heldout", run / "heldout_metrics.json", stamo_vla_cli("heldout", *heldout)),
        ]
        standard = self.evals / name / "standard"
        steps.append(
            (
                "eval",
                standard / "summary.json",
                stamo_vla_cli("eval", *self.eval_args(arm, seed, [self.cfg.suite], standard)),
            )
        )
        if self.cfg.perturbed_suites:
            out = self.evals / name / "perturbed"
            args = self.eval_args(arm, seed, self.cfg.perturbed_suites, out)
            steps.append(("eval_perturbed", out / "summary.json", stamo_vla_cli("eval", *args)))
        return steps

    def run_one(self, arm: str, seed: int) -> None:
        """Every step of one run that has not finished; each step's wall time and commit appended to
        run_times.jsonl (the power stage's cost per run). A step is refused (`MixedCommitsError`) when the code
        changed since the study's earlier stage calls, unless ``allow_mixed_commits``."""
        name = self.run_id(arm, seed)
        for step, done, command in self.run_steps(arm, seed):
            if done.exists():
                continue
            code = (
                code_version()
            )  # the step's command imports the code on disk now: it must still be the study's
            self.check_commit(step, code)
            start = time.perf_counter()
            self.run(command, f"{step}_{name}")
            seconds = round(time.perf_counter() - start, 1)
            append_jsonl(self.out / RUN_TIMES_NAME, {"run": name, "step": step, "seconds": seconds, **code})

    def run_seconds(self) -> dict[str, float]:
        """Seconds of every run, summed over its steps and calls."""
        totals: dict[str, float] = {}
        for r in read_jsonl(self.out / RUN_TIMES_NAME):
            totals[r["run"]] = totals.get(r["run"], 0.0) + r["seconds"]
        return totals

    def stage_pilot(self) -> None:
        for arm, seed in self.cfg.pilot_runs:
            self.run_one(arm, seed)

    def stage_power(self) -> None:
        from stamo_vla.study.policy_report import stage_times, standard_outcomes
        from stamo_vla.study.power import plan_seeds

        pilot = {arm: {} for arm in self.cfg.primary_arms}
        for arm, seed in self.cfg.pilot_runs:
            outcomes = standard_outcomes(self, arm, seed)
            if outcomes is None:
                raise FileNotFoundError(
                    f"{self.run_id(arm, seed)} has no standard evaluation; run the pilot stage"
                )
            pilot[arm][seed] = outcomes
        seconds = self.run_seconds()
        costs = [seconds[self.run_id(a, s)] for a, s in self.cfg.pilot_runs if self.run_id(a, s) in seconds]
        if not costs:
            raise FileNotFoundError(
                f"{self.out / RUN_TIMES_NAME} holds no pilot run time; run the pilot stage"
            )
        spent = sum(t["seconds"] for name, t in stage_times(self).items() if name != "power")
        plan = plan_seeds(pilot, self.cfg, spent, sum(costs) / len(costs))
        write_json_atomic(
            self.out / POWER_NAME, {**plan, "written": time.strftime("%Y-%m-%d %H:%M:%S"), **code_version()}
        )
        print(
            f"[study] power: {plan['required_seeds']} seeds per arm required; seeds given: "
            + ", ".join(f"{a} {len(s)}" for a, s in plan["seeds"].items()),
            flush=True,
        )

    def stage_runs(self) -> None:
        if self.power_plan() is None:
            raise FileNotFoundError(
                f"{self.out / POWER_NAME} is missing; run the power stage before the runs stage"
            )
        for arm, seed in self.planned_runs():
            self.run_one(arm, seed)

    def stage_reproduce(self) -> None:
        from stamo_vla.study.policy_report import standard_outcomes
        from stamo_vla.study.reproduce import compare_adapters

        collapsed = []
        for arm, seed in self.planned_runs():
            outcomes = standard_outcomes(self, arm, seed)
            if outcomes is not None and sum(outcomes) / len(outcomes) < self.cfg.collapse_threshold:
                collapsed.append((arm, seed))
        result: dict = {"run": None, "reason": "no evaluated run collapsed"}
        if collapsed:
            arm, seed = collapsed[0]
            again = self.reproduce_root / self.run_id(arm, seed)
            if not (again / "adapter").is_dir():
                args = self.finetune_args(arm, seed, run_dir=again)
                self.run(stamo_vla_cli("finetune", *args), f"reproduce_{self.run_id(arm, seed)}")
            first = self.finetune_root / self.run_id(arm, seed) / "adapter"
            result = {"run": self.run_id(arm, seed), **compare_adapters(first, again / "adapter")}
        write_json_atomic(self.out / REPRODUCE_NAME, result)

    def stage_report(self) -> None:
        from stamo_vla.study.policy_report import write_report

        write_report(self)


def _ids(values: list[int]) -> str:
    """A list of integers as one draccus value: ``[0,1]``."""
    return "[" + ",".join(map(str, values)) + "]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_config(PolicyStudyConfig, args, prefix="study_")
    study = PolicyStudy(cfg)
    if set(cfg.stages) - {"report"}:  # rewriting the report is not a run of the study
        study.record_command(["stamo-vla", "study", *args])
    times = study.main()
    print("\n[study] stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"[study] report: {Path(cfg.output_dir) / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
