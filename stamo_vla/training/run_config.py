"""`RunConfig`: the knobs every training recipe shares (fine-tuning, base training, StaMo pretraining), one name
each. A recipe's config subclasses it and redeclares a field only to change its default.

Renamed fields of saved configs (``config.yaml`` in run directories written before the rename) are mapped by
`upgrade_saved_run`, so old runs still resume and load:

    save_every -> save_steps    log_every -> log_steps    eval_every -> eval_steps
    run_root_dir + run_id -> run_dir
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from stamo_vla.configs import check_choice, check_positive_int, choice_word
from stamo_vla.training.distributed import MIXED_PRECISION

T = TypeVar("T", bound="RunConfig")
RENAMED = {"save_every": "save_steps", "log_every": "log_steps", "eval_every": "eval_steps"}


@dataclass
class RunConfig:
    """Where a training run writes, how long it runs, and how it checkpoints, logs and resumes."""

    # Output folder: checkpoints/, config.yaml, metrics.jsonl, tensorboard/ and the final model.
    run_dir: str | None = "runs/run"
    # Continue from the newest checkpoint in run_dir that reads back intact (model, optimizer, schedule, RNG and
    # data position); a run_dir without one starts fresh. True on every recipe, so a preempted job is rerun
    # with the same command.
    resume: bool = True
    # Seed of model init, data order, augmentation and noise.
    seed: int = 0
    # Optimizer steps to train for.
    max_steps: int = 1000
    # Samples per micro-batch and process.
    batch_size: int = 16
    # Micro-batches per optimizer step (effective batch = batch_size x grad_accumulation_steps x processes).
    grad_accumulation_steps: int = 1
    # Save a checkpoint every this many optimizer steps (0: only at the end; the last step always saves).
    save_steps: int = 0
    # Keep only this many newest checkpoints.
    keep_last: int = 1
    # Log metrics every this many optimizer steps (and at the last step).
    log_steps: int = 10
    # auto (bf16 autocast on CUDA, float32 on CPU) | no | bf16 (bf16 autocast on CUDA and CPU alike).
    mixed_precision: str = "auto"
    # Log to Weights & Biases under this project (None: wandb is not used or imported).
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        self.mixed_precision = choice_word(self.mixed_precision, MIXED_PRECISION)  # `no` reads as a boolean
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in ("max_steps", "batch_size", "grad_accumulation_steps", "keep_last", "log_steps"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("save_steps", self.save_steps, allow_zero=True)

    def run_path(self) -> Path:
        """The run directory."""
        if not self.run_dir:
            raise ValueError(f"run_dir={self.run_dir!r} is not valid; pass --run_dir <output folder>")
        return Path(self.run_dir)

    def saves_at(self, step: int) -> bool:
        """Whether `step` (1-based, done) writes a checkpoint."""
        return (self.save_steps > 0 and step % self.save_steps == 0) or step == self.max_steps

    def logs_at(self, step: int) -> bool:
        """Whether `step` (1-based, done) logs its metrics."""
        return step % self.log_steps == 0 or step == self.max_steps

    @classmethod
    def upgrade_saved(cls, data: dict, run_dir: str | Path | None = None) -> dict:
        """A saved config dict (YAML) with old field names mapped to the current ones."""
        return upgrade_saved_run(data, run_dir)


def load_run_config(config_cls: type[T], path: str | Path) -> T:
    """Load a run's saved ``config.yaml`` into `config_cls`, old field names included."""
    import draccus
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    return draccus.decode(config_cls, config_cls.upgrade_saved(data, path.parent))


def upgrade_saved_run(data: dict, run_dir: str | Path | None = None) -> dict:
    """A saved config dict with the run fields' old names mapped to the current ones (a new dict).

    Args:
        data: the YAML of a saved config.
        run_dir: the directory the config was found in; the run directory of an old fine-tuning config that
            derived its name (``run_id: null``).
    """
    data = dict(data)
    for old, new in RENAMED.items():
        if old in data:
            value = data.pop(old)
            data.setdefault(new, value)
    if "run_root_dir" in data or "run_id" in data:
        root, run_id = data.pop("run_root_dir", "runs"), data.pop("run_id", None)
        if "run_dir" not in data:
            if run_id is not None:
                data["run_dir"] = str(Path(root) / run_id)
            else:
                data["run_dir"] = str(run_dir) if run_dir is not None else None
    return data
