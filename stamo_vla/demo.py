"""`make demo` / `stamo-vla demo`: the whole product on the embedded tiny default, on a CPU, with nothing downloaded.

Stages (each skipped when its output exists, each resumable when interrupted; the time of each is printed):

1. collect     scripted LIBERO demonstrations (spawned simulator workers) -> RLDS dataset
2. pretrain    tiny StaMo (frozen random DINOv2 + compressor + state bottleneck, SD3-style DiT) on the collected
               frames, held-out episodes for its own-vs-shuffled reconstruction table
3. cache       StaMo targets for every frame (the fine-tuning runs no encoder)
4. finetune    tiny VLA + LoRA with the StaMo motion and state targets, under torchrun; and plain LoRA
5. evaluate    the LIBERO protocol on a few episodes per task for each policy, plus the scripted oracle
6. probe       the latent-action probe (StaMo motion vs the untrained encoder, pixel and DINOv2 differences and the
               proprio oracle; mean +- std over episode splits and leave-one-task-out)
7. report      runs/demo/REPORT.md: every number read from the run's own output files

The tiny VLA and StaMo are random-init and trained for minutes on a handful of episodes: the point is that every
stage runs end to end and reports honestly, not that the tiny policy solves LIBERO.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_positive_int, parse_config, resolve_preset
from stamo_vla.demo_report import write_report
from stamo_vla.study.stages import StagedRun, stamo_vla_cli, torchrun
from stamo_vla.vla import build_tiny


@dataclass
class DemoConfig:
    """The demo's sizes (defaults: ~20 minutes on 2 CPU cores)."""

    # Output folder of every stage and of REPORT.md.
    output_dir: str = "runs/demo"
    # LIBERO suite and tasks to collect and evaluate.
    suite: str = "libero_spatial"
    task_ids: list[int] = field(default_factory=lambda: [0, 1])
    # Successful scripted demonstrations per task.
    episodes_per_task: int = 6
    # Simulator worker processes (collection and evaluation).
    num_workers: int = 2
    # StaMo pretraining steps (improved tiny preset) and VAE fit steps before it (the preset's 700: fewer leave the
    # VAE barely above the mean frame, so decoded pixels cannot show what the states carry). Measured on 12 episodes
    # of 2 tasks with 2 held out: 2000 steps gave own 23.8 vs shuffled 21.7 dB in ~5 min on a busy 2-core CPU.
    stamo_steps: int = 2000
    stamo_vae_fit_steps: int = 700
    # Whole episodes held out of StaMo pretraining; its reconstruction table is measured on them.
    stamo_heldout_episodes: int = 2
    # Fine-tuning steps per run, and processes for torchrun.
    finetune_steps: int = 200
    finetune_procs: int = 2
    # Evaluation: trials per task (upstream: 50) and steps per episode (None: the suite's own budget, 220 on
    # libero_spatial, so that success is possible); cameras of collection and evaluation render at eval_resolution
    # (the benchmark renders 256 px; collected frames are stored resized to the dataset spec's 256 px).
    eval_trials: int = 1
    eval_max_steps: int | None = None
    eval_resolution: int = 128
    # Probe horizons k.
    probe_horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # Most MLP steps per probe fit (early-stopped on validation episodes).
    probe_steps: int = 400
    # Seeds of the probe's random episode splits (mean +- std over them).
    probe_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Stages to run (default: all, in order).
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages={unknown} are not valid; allowed: {list(STAGES)}")
        check_positive_int("num_workers", self.num_workers)
        check_positive_int("finetune_procs", self.finetune_procs)


STAGES = ("collect", "pretrain", "cache", "finetune", "evaluate", "probe", "report")
# fine-tuning targets compared: the paper's two StaMo targets and the plain LoRA baseline
TARGETS = ("motion", "state", "none")


class Demo(StagedRun):
    """Paths and stage runners of one demo directory (commands, logs and stage marks: `StagedRun`)."""

    STAGES = STAGES
    NAME = "demo"
    targets = TARGETS

    def __init__(self, cfg: DemoConfig):
        super().__init__(cfg, cfg.output_dir, cfg.stages)
        self.data = self.out / "data"
        self.dataset = f"{cfg.suite}_no_noops"
        self.stamo_run = self.out / "stamo"
        self.runs = self.out / "finetune"
        self.evals = self.out / "eval"
        self.probe = self.out / "probe"

    # ---------------------------------------------------------------- helpers
    def stamo_model(self) -> Path:
        return self.latest_model(self.stamo_run, "pretrain")

    # ---------------------------------------------------------------- stages
    def collect(self) -> None:
        c = self.cfg
        args = [
            "--suite",
            c.suite,
            "--task_ids",
            _ids(c.task_ids),
            "--episodes_per_task",
            str(c.episodes_per_task),
        ]
        args += ["--num_workers", str(c.num_workers), "--data_root_dir", str(self.data)]
        args += ["--render_resolution", str(c.eval_resolution)]
        self.run(stamo_vla_cli("collect", *args), "collect")

    def pretrain(self) -> None:
        import yaml

        c = self.cfg
        # the tiny preset with its image source switched to the collected frames (a source type is chosen
        # as a whole, so it is replaced in a copy of the preset rather than overridden field by field)
        preset = yaml.safe_load(resolve_preset("tiny", prefix="pretrain_stamo_").read_text())
        preset["source"] = {"type": "rlds", "data_root_dir": str(self.data), "dataset_names": [self.dataset]}
        preset["source"].update(cameras=["image"], frame_stride=2)
        # held-out images come from whole held-out episodes (never frames of training episodes)
        preset.update(num_heldout=16, heldout_groups=c.stamo_heldout_episodes)
        config = self.out / "pretrain_stamo.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(preset))
        args = ["--config", str(config), "--run_dir", str(self.stamo_run), "--max_steps", str(c.stamo_steps)]
        args += [
            "--vae_fit_steps",
            str(c.stamo_vae_fit_steps),
            "--eval_steps",
            str(max(1, c.stamo_steps // 2)),  # own vs shuffled logged mid-way and at the end
            "--save_steps",
            str(c.stamo_steps),
        ]
        # one thread: the tiny model gains nothing from a second, which on a shared 2-core CPU only spin-waits
        self.run(stamo_vla_cli("pretrain", *args), "pretrain", env={"OMP_NUM_THREADS": "1"})

    def cache(self) -> None:
        args = ["--data_root_dir", str(self.data), "--dataset_name", self.dataset]
        self.run(stamo_vla_cli("cache-targets", *args, "--stamo_path", str(self.stamo_model())), "cache")

    def finetune(self) -> None:
        c = self.cfg
        for target in TARGETS:
            args = [
                "--config",
                "tiny",
                "--data.data_root_dir",
                str(self.data),
                "--data.dataset_names",
                f"[{self.dataset}]",
                "--run_dir",
                str(self.runs / target),
                "--max_steps",
                str(c.finetune_steps),
                "--save_steps",
                str(max(1, c.finetune_steps // 2)),
                "--adapter.target",
                target,
                "--resume",
                "true",
                "--vla_path",
                str(self.runs / "base_model"),
            ]
            if target != "none":
                args += ["--data.use_target_cache", "true", "--stamo_path", str(self.stamo_model())]
            self._ensure_base()
            self.run(
                torchrun(c.finetune_procs, "finetune", *args),
                f"finetune_{target}",
                env={"OMP_NUM_THREADS": "1"},
            )

    def _ensure_base(self) -> None:
        base = self.runs / "base_model"
        if not (base / "config.json").is_file():
            build_tiny(save_dir=base, seed=0)

    def evaluate(self) -> None:
        c = self.cfg
        common = [
            "--suites",
            f"[{c.suite}]",
            "--task_ids",
            _ids(c.task_ids),
            "--num_workers",
            str(c.num_workers),
            "--video",
            "all",
            "--progress",
            "false",
            "--env_resolution",
            str(c.eval_resolution),
        ]
        self.run(
            stamo_vla_cli(
                "eval",
                "--policy.type",
                "scripted",
                "--num_trials_per_task",
                "1",
                "--output_dir",
                str(self.evals / "oracle"),
                *common,
            ),
            "eval_oracle",
        )
        for target in TARGETS:
            self.run(
                stamo_vla_cli(
                    "eval",
                    "--policy.type",
                    "adapter",
                    "--policy.checkpoint",
                    str(self.runs / "base_model"),
                    "--policy.adapter_dir",
                    str(self.runs / target / "adapter"),
                    "--policy.unnorm_key",
                    self.dataset,
                    "--num_trials_per_task",
                    str(c.eval_trials),
                    *(["--max_steps", str(c.eval_max_steps)] if c.eval_max_steps else []),
                    "--center_crop",
                    "false",
                    "--output_dir",
                    str(self.evals / target),
                    *common,
                ),
                f"eval_{target}",
                env={"OMP_NUM_THREADS": "1"},
            )

    def probe_stage(self) -> None:
        c = self.cfg
        self.run(
            stamo_vla_cli(
                "probe",
                "--data_root_dir",
                str(self.data),
                "--dataset_name",
                self.dataset,
                "--stamo_path",
                str(self.stamo_model()),
                "--output_dir",
                str(self.probe),
                "--horizons",
                _ids(c.probe_horizons),
                "--max_steps",
                str(c.probe_steps),
                "--seeds",
                _ids(c.probe_seeds),
            ),
            "probe",
            env={"OMP_NUM_THREADS": "1"},
        )

    def report(self) -> None:
        write_report(self)

    # ---------------------------------------------------------------- driver
    def stage_fn(self, name: str) -> Callable[[], None]:
        return {"probe": self.probe_stage}.get(name) or getattr(self, name)


def _ids(values: list[int]) -> str:
    """A list of integers as one draccus value: ``[0,1]``."""
    return "[" + ",".join(map(str, values)) + "]"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    times = Demo(cfg).main()
    print("\n[demo] stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(
        f"[demo] total {time.perf_counter() - start:.0f} s this call; report: {Path(cfg.output_dir) / 'REPORT.md'}"
    )
    return 0
