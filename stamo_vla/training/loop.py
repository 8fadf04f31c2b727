"""The training loop every recipe runs: fine-tuning, base training and StaMo pretraining.

A recipe builds its model (``forward(batch) -> (loss, metrics)`` and ``save_pretrained``), a resumable batch
stream (`stamo_vla.training.batches`) and the optimizer, then hands them to `train_loop`. The loop draws
``grad_accumulation_steps`` micro-batches, takes one optimizer step (`train_step`), logs, checkpoints and, on
SIGTERM, checkpoints the current step and raises `TrainingInterrupted`. What differs between recipes is a
`Hooks` value: a look at each step's micro-batches (the supervision check), work after a step (evaluation,
health checks) and work before a checkpoint (the StaMo bottleneck's recalibration).

Resume is the same everywhere: `resume_point` picks the newest intact checkpoint, `optimization_state`
restores the optimizer, schedule and RNG, and the stream continues from the checkpoint's ``data_state`` (in
samples, when the batch size changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stamo_vla.training.batches import LoaderBatches
from stamo_vla.training.checkpoint import (
    TrainerState,
    find_resumable_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from stamo_vla.training.preemption import TrainingInterrupted, stop_on_sigterm
from stamo_vla.training.run_config import RunConfig
from stamo_vla.training.step import train_step

logger = logging.getLogger(__name__)


def _nothing(*args) -> None:
    return None


@dataclass
class Hooks:
    """What a recipe adds to the loop; each one defaults to doing nothing."""

    # Sees each step's micro-batches (before they move to the device) and may take entries out of them; called
    # with (micro_batches, accelerator). The supervision check is one.
    inspect: Callable[[list, Any], None] = _nothing
    # Called with (step, metrics) after each optimizer step is logged: evaluation, health checks, records.
    after_step: Callable[[int, dict], None] = _nothing
    # Called on every rank before each checkpoint is written (e.g. exact bottleneck statistics).
    before_save: Callable[[], None] = _nothing


@dataclass
class Training:
    """What one run trains: the prepared model, its optimizer and schedule, and where the run stands."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    state: TrainerState = field(default_factory=TrainerState)


def resume_point(cfg: RunConfig, run_dir: Path, main: bool = True) -> Path | None:
    """The checkpoint to resume from: the newest intact one when ``cfg.resume`` is set, else None.

    Args:
        cfg: the run's configuration.
        run_dir: the run directory.
        main: this is rank 0 (only it logs).
    """
    if not cfg.resume:
        return None
    found = find_resumable_checkpoint(run_dir)
    if found is None and list_checkpoints(run_dir) and main:
        logger.warning("resume=true but %s has no intact checkpoint; starting from scratch", run_dir)
    return found


def loader_batches(cfg: RunConfig, dataset, loader, state: TrainerState) -> LoaderBatches:
    """The batches of a recipe that reads ``cfg.data`` (a `DataConfig`) through `loader`, from ``state``'s position.

    Args:
        cfg: the run's configuration.
        dataset: the sample stream `loader` reads.
        loader: the DataLoader.
        state: the trainer state (its data position).
    """
    data = cfg.data
    source = f"data.split={data.split!r} of {list(data.dataset_names)} under {data.data_root_dir}"
    return LoaderBatches(dataset, loader, cfg.batch_size, state.data_state, source)


def to_device(batch, device):
    """A batch (a tensor, or a dict whose tensors move) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def train_loop(
    cfg: RunConfig,
    run_dir: Path,
    training: Training,
    stream: Iterator,
    accelerator,
    log,
    hooks: Hooks | None = None,
) -> dict:
    """Optimizer steps until ``cfg.max_steps``: log, checkpoint, stop cleanly on SIGTERM; the last metrics.

    Args:
        cfg: the run fields (max_steps, grad_accumulation_steps, optim.max_grad_norm, log/save steps, keep_last).
        run_dir: where checkpoints are written.
        training: the prepared model, optimizer, schedule and state (its step advances).
        stream: micro-batches, with ``state_dict()`` (its position, saved in each checkpoint).
        accelerator: the run's `accelerate.Accelerator`.
        log: the run's `TrainLogger`.
        hooks: the recipe's additions (None: none).
    """
    hooks = hooks or Hooks()
    model, optimizer, scheduler = training.model, training.optimizer, training.scheduler
    state = training.state

    def checkpoint() -> Path:
        hooks.before_save()
        state.data_state = stream.state_dict()
        unwrapped = accelerator.unwrap_model(model)
        return save_checkpoint(run_dir, state, unwrapped, optimizer, scheduler, accelerator, cfg.keep_last)

    metrics: dict = {}
    with stop_on_sigterm() as stop:
        while state.step < cfg.max_steps:
            micro = [next(stream) for _ in range(cfg.grad_accumulation_steps)]
            hooks.inspect(micro, accelerator)
            micro = [to_device(m, accelerator.device) for m in micro]
            step = state.step + 1
            metrics = train_step(
                model, micro, optimizer, scheduler, accelerator, cfg.optim.max_grad_norm, step
            )
            state.step = step
            if cfg.logs_at(step):
                log.log(step, metrics)
            hooks.after_step(step, metrics)
            saved = checkpoint() if cfg.saves_at(step) else None
            if step < cfg.max_steps and stop.requested(accelerator):  # SIGTERM: keep this step, then exit
                raise TrainingInterrupted(saved or checkpoint(), step)
    return metrics
