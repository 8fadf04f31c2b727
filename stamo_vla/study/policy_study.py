"""`stamo-vla study`: a policy that succeeds on LIBERO, trained on a 2-core CPU, and StaMo-aux against plain
LoRA on equal budgets.

    stamo-vla study                              # the libero_spatial study (hours; resumable, run it in the background)
    nohup stamo-vla study > study.log 2>&1 &     # rerun the same command after an interruption: it resumes
    stamo-vla study --stages '[report]'          # rewrite the report from the run's files

Stages (each skipped when finished, each resuming its own work when interrupted):

1. collect    scripted demonstrations from *fresh* initial states (never the benchmark's 50 test states; the
              distance of every start to the nearest test state is recorded and checked): the evaluated tasks
              (fine-tuning data) and other tasks of the suite (base data)
2. stamo      a tiny StaMo pretrained on the fine-tuning frames (or ``stamo_path``), and its target cache
3. base       full-parameter training of the small OpenVLA-architecture policy on the base tasks, token actions:
              the stand-in for openvla-7b
4. finetune   the plugin's LoRA fine-tuning of that base on the evaluated tasks, OFT-style L1 chunk head, one run
              per (arm, seed): plain LoRA (``target none``) and LoRA + the StaMo head, same data, steps and seeds
5. heldout    action L1 and StaMo target loss of every run on held-out episodes of the fine-tuning data
6. evaluate   the upstream LIBERO protocol on the evaluated tasks: the 50 fixed initial states per task, the suite's
              step budget (220 for libero_spatial), 10 wait steps, success = the env's ``done``
7. report     REPORT.md + study.json + curves: success with 95% Wilson intervals per arm and seed, held-out metrics

Documented departures from the benchmark, all for CPU cost: cameras rendered at ``env_resolution`` (128 px, the
policy sees 112 px) instead of 256 px, in collection (frames stored resized to the spec's 256 px) and evaluation
alike; the policy is a 5M-parameter model of the OpenVLA architecture. Evaluation renders the cameras only on the
steps whose observation the policy reads (``--render policy``: one step in 8, the chunk runs open loop), which
changes no outcome; the failure videos hold those frames.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_choice, check_positive_int, parse_config, resolve_preset
from stamo_vla.study.policy_report import write_report
from stamo_vla.study.stages import StagedRun, stamo_vla_cli

STAGES = ("collect", "stamo", "base", "finetune", "heldout", "evaluate", "report")
# fine-tuning arms: the plain LoRA baseline and the StaMo auxiliary targets (adapter.target values)
ARMS = ("none", "state", "motion")


@dataclass
class PolicyStudyConfig:
    """The CPU policy study (defaults: libero_spatial tasks 0 and 1; about four hours on 2 idle cores)."""

    # Folder of every stage's output and of REPORT.md.
    output_dir: str = "runs/study_spatial"
    # LIBERO suite of every task below.
    suite: str = "libero_spatial"
    # Evaluated tasks: fine-tuning data and the benchmark evaluation.
    eval_task_ids: list[int] = field(default_factory=lambda: [0, 1])
    # Tasks of the base training data (disjoint from eval_task_ids: the base has never seen the evaluated tasks).
    base_task_ids: list[int] = field(default_factory=lambda: [2, 3, 6, 7, 8, 9])
    # Successful demonstrations per evaluated task, and per base task.
    finetune_episodes: int = 40
    base_episodes: int = 8
    # Seed of the fresh placements and controller noise of the collection.
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
    # Arms (adapter.target: none = plain LoRA) and training seeds; every arm runs every seed.
    arms: list[str] = field(default_factory=lambda: ["none", "state"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # Percent of fine-tuning episodes trained on; the rest are the held-out episodes of stage heldout.
    train_percent: int = 90
    # Evaluation: trials per task (the benchmark's 50 fixed initial states).
    trials_per_task: int = 50
    # Camera render size of collection and evaluation alike (the benchmark renders 256 px; the policy sees 112).
    env_resolution: int = 128
    # Stages to run, in order (default: all).
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        for stage in self.stages:
            check_choice("stages entry", stage, STAGES)
        for arm in self.arms:
            check_choice("arms entry", arm, ARMS)
        overlap = sorted(set(self.eval_task_ids) & set(self.base_task_ids))
        if overlap:
            raise ValueError(
                f"base_task_ids={self.base_task_ids} and eval_task_ids={self.eval_task_ids} share tasks {overlap}; "
                "the base must not train on the evaluated tasks"
            )
        if not self.eval_task_ids or not self.seeds or not self.arms:
            raise ValueError("eval_task_ids, seeds and arms must each name at least one entry")
        if self.stamo_steps is not None:
            check_positive_int("stamo_steps", self.stamo_steps)
        for name in ("finetune_episodes", "base_episodes", "num_workers", "base_steps"):
            check_positive_int(name, getattr(self, name))
        for name in ("base_batch_size", "finetune_steps", "finetune_batch_size", "trials_per_task"):
            check_positive_int(name, getattr(self, name))
        if not 0 < self.train_percent < 100:
            raise ValueError(
                f"train_percent={self.train_percent} must be in (0, 100): held-out episodes are needed"
            )

    @property
    def runs(self) -> list[tuple[str, int]]:
        """Every fine-tuning run as (arm, seed), seed-major: the first seed of every arm finishes first."""
        return [(arm, seed) for seed in self.seeds for arm in self.arms]


FINETUNE_DATASET = "finetune"
BASE_DATASET = "base"


class PolicyStudy(StagedRun):
    """Paths and stages of one study directory."""

    STAGES = STAGES
    NAME = "study"

    def __init__(self, cfg: PolicyStudyConfig):
        super().__init__(cfg, cfg.output_dir, cfg.stages)
        self.data = self.out / "data"
        self.stamo_run = self.out / "stamo"
        self.base_run = self.out / "base"
        self.finetune_root = self.out / "finetune"
        self.evals = self.out / "eval"

    def dataset(self, kind: str) -> str:
        return f"{self.cfg.suite}_{kind}"

    @staticmethod
    def run_id(arm: str, seed: int) -> str:
        return f"{arm}_seed{seed}"

    def stamo_model(self) -> Path:
        if self.cfg.stamo_path:
            return Path(self.cfg.stamo_path)
        return self.latest_model(self.stamo_run, "stamo")

    # ---------------------------------------------------------------- stages
    def stage_collect(self) -> None:
        c = self.cfg
        for kind, tasks, episodes in (
            (FINETUNE_DATASET, c.eval_task_ids, c.finetune_episodes),
            (BASE_DATASET, c.base_task_ids, c.base_episodes),
        ):
            args = ["--suite", c.suite, "--task_ids", _ids(tasks), "--episodes_per_task", str(episodes)]
            args += ["--num_workers", str(c.num_workers), "--seed", str(c.collect_seed)]
            args += ["--data_root_dir", str(self.data), "--dataset_name", self.dataset(kind)]
            args += ["--init_states", "fresh", "--render_resolution", str(c.env_resolution)]
            self.run(stamo_vla_cli("collect", *args), f"collect_{kind}")

    def stage_stamo(self) -> None:
        import yaml

        c = self.cfg
        if not c.stamo_path:
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
        args = ["--data_root_dir", str(self.data), "--dataset_name", self.dataset(FINETUNE_DATASET)]
        args += ["--stamo_path", str(self.stamo_model())]
        self.run(stamo_vla_cli("cache-targets", *args), "stamo_cache")

    def stage_base(self) -> None:
        c = self.cfg
        args = ["--model", c.base_model]
        args += [
            "--data.data_root_dir",
            str(self.data),
            "--data.dataset_names",
            f"[{self.dataset(BASE_DATASET)}]",
        ]
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

    def finetune_args(self, arm: str, seed: int) -> list[str]:
        """The ``stamo-vla finetune`` options of one run."""
        c = self.cfg
        args = ["--config", c.finetune_preset]
        args += ["--vla_path", str(self.base_run / "model"), "--data.data_root_dir", str(self.data)]
        args += ["--data.dataset_names", f"[{self.dataset(FINETUNE_DATASET)}]"]
        args += ["--data.train_percent", str(c.train_percent)]
        args += ["--run_dir", str(self.finetune_root / self.run_id(arm, seed))]
        args += ["--seed", str(seed), "--data.seed", str(seed)]
        args += ["--max_steps", str(c.finetune_steps), "--batch_size", str(c.finetune_batch_size)]
        args += [
            "--save_steps",
            str(max(1, c.finetune_steps // 5)),
            "--adapter.target",
            arm,
            "--resume",
            "true",
        ]
        if arm != "none":
            args += ["--data.use_target_cache", "true", "--stamo_path", str(self.stamo_model())]
        return args

    def stage_finetune(self) -> None:
        for arm, seed in self.cfg.runs:
            if (self.finetune_root / self.run_id(arm, seed) / "adapter").is_dir():
                continue
            args = self.finetune_args(arm, seed)
            self.run(stamo_vla_cli("finetune", *args), f"finetune_{self.run_id(arm, seed)}")

    def stage_heldout(self) -> None:
        for arm, seed in self.cfg.runs:
            run = self.finetune_root / self.run_id(arm, seed)
            self.run(stamo_vla_cli("heldout", "--run_dir", str(run)), f"heldout_{self.run_id(arm, seed)}")

    def stage_evaluate(self) -> None:
        c = self.cfg
        for arm, seed in self.cfg.runs:
            name = self.run_id(arm, seed)
            args = ["--checkpoint", str(self.base_run / "model")]
            args += ["--adapter_dir", str(self.finetune_root / name / "adapter")]
            args += ["--unnorm_key", self.dataset(FINETUNE_DATASET), "--suites", f"[{c.suite}]"]
            args += ["--task_ids", _ids(c.eval_task_ids)]
            args += ["--num_trials_per_task", str(c.trials_per_task), "--num_workers", str(c.num_workers)]
            args += ["--env_resolution", str(c.env_resolution), "--center_crop", "false"]
            args += ["--video", "failures", "--render", "policy", "--progress", "false"]
            args += ["--output_dir", str(self.evals / name)]
            self.run(stamo_vla_cli("eval", *args), f"eval_{name}")

    def stage_report(self) -> None:
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
