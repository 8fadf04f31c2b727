"""Atomic training checkpoints and exact resume.

Layout of ``<run_dir>/checkpoints/step_00000100/``:
    model/               written by the model's own ``save_pretrained`` (reload it with ``from_pretrained``)
    optimizer.pt         optimizer state dict
    scheduler.pt         LR scheduler state dict (when there is one)
    rng_states.pt        list, one entry per rank: python, numpy, torch, CUDA RNG states
    trainer_state.json   {"step", "world_size", "data_state", ...extra}

A checkpoint is written into a temporary directory and renamed into place (`stamo_vla.fileio.atomic_dir`),
so a crash mid-write never replaces or corrupts the last good checkpoint; `find_latest_checkpoint` only
sees complete ones. Temporaries left by a killed write are removed by the next save. Older checkpoints are
pruned only after the new one has been read back intact (`verify_checkpoint`), and `find_resumable_checkpoint`
skips a damaged newest checkpoint, with a warning naming it, in favour of the newest intact one.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stamo_vla.fileio import (
    atomic_dir,
    check_finite_safetensors,
    check_finite_tensors,
    read_json,
    remove_stale_temporaries,
    safetensors_problem,
    write_json_atomic,
)
from stamo_vla.training.distributed import gather_objects, rng_state, set_rng_state
from stamo_vla.training.optim import OptimizerConfig, apply_optim_config, build_optimizer, build_scheduler

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CHECKPOINT_KIND = "training_checkpoint"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Where a run stands: the number of completed optimizer steps and the data iterator's position."""

    step: int = 0
    data_state: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``<run_dir>/checkpoints``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _torch_file_problem(file: Path) -> str | None:
    """Why a `torch.save` file (a zip archive) is unreadable, or None; checks every member's CRC."""
    try:
        with zipfile.ZipFile(file) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{file} is not a readable torch file ({type(err).__name__}: {err})"
    return f"{file} is corrupt (member {bad} fails its checksum)" if bad else None


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint directory, or None when every file in it reads back intact.

    Checks the state file parses, every ``*.safetensors`` header matches the file size, every ``*.pt``
    archive passes its checksums and every ``*.json`` parses. Cheap: no tensor is materialized.
    """
    path = Path(path)
    state = path / STATE_FILE
    if not state.is_file():
        return f"{path} has no {STATE_FILE} (an unfinished write)"
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
        elif file.suffix == ".pt":
            problem = _torch_file_problem(file)
        elif file.suffix == ".json":
            try:
                read_json(file, "")
                problem = None
            except OSError as err:
                problem = f"{file} is not readable ({err})"
            except ValueError as err:
                problem = str(err).rstrip(". ")
        else:
            continue
        if problem:
            return problem
    return None


def find_resumable_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that reads back intact; each damaged newer one is named in a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(
            f"checkpoint {path} is damaged and is skipped: {problem}. Resuming from the newest intact "
            "checkpoint before it instead (the damaged one is left in place; delete it when done).",
            stacklevel=2,
        )
    return None


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    accelerator: Accelerator | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Save a checkpoint for `state.step` (call on every rank; rank 0 writes) and prune old ones.

    Args:
        model: the (unwrapped) model; it must have ``save_pretrained(directory)``.
        keep_last: keep only this many newest checkpoints (None: keep all). Older ones are deleted only
            after the new one reads back intact; otherwise all are kept and a warning says why.
    """
    rng = gather_objects(rng_state(), accelerator)  # collective: every rank takes part
    path = checkpoint_dir(run_dir, state.step)
    if accelerator is None or accelerator.is_main_process:
        trained = ((n, p.detach()) for n, p in model.named_parameters() if p.requires_grad)
        check_finite_tensors(trained, f"the model of step {state.step} (not saved)", _DIVERGED_FIX)
        remove_stale_temporaries(path.parent, ".step_*.tmp")  # left by a write that was killed
        _write_checkpoint(path, state, model, optimizer, scheduler, rng)
        problem = verify_checkpoint(path)
        if problem is not None:
            warnings.warn(
                f"the checkpoint just written does not read back ({problem}); older checkpoints are kept.",
                stacklevel=2,
            )
        elif keep_last is not None:
            for old in list_checkpoints(run_dir)[: -max(keep_last, 1)]:
                if old != path:
                    shutil.rmtree(old, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return path


def _write_checkpoint(path: Path, state: TrainerState, model, optimizer, scheduler, rng: list) -> None:
    """Write the checkpoint's files through `atomic_dir`; a full disk names the file, the space it needed and the
    checkpoint left intact."""
    writing = path / "model"
    try:
        with atomic_dir(path, kind=CHECKPOINT_KIND, overwrite=True) as tmp:
            model.save_pretrained(tmp / "model")
            writing = path / "optimizer.pt"
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            writing = path / "rng_states.pt"
            torch.save(rng, tmp / "rng_states.pt")
            info = {"step": state.step, "world_size": len(rng), "data_state": state.data_state, **state.extra}
            writing = path / STATE_FILE
            write_json_atomic(tmp / STATE_FILE, info)  # written last: marks the checkpoint complete
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CheckpointWriteError(_disk_full_message(path, writing, model, optimizer, err)) from err


def _disk_full_message(path: Path, writing: Path, model, optimizer, err: OSError) -> str:
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed += sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    previous = [p for p in list_checkpoints(path.parent.parent) if p != path]
    kept = (
        f"the previous checkpoint {previous[-1]} is intact and a rerun resumes from it"
        if previous
        else "no earlier checkpoint exists; nothing was replaced"
    )
    return (
        f"the disk filled while writing {writing} ({err.strerror}): checkpoint {path.name} needs about "
        f"{needed / 2**20:.1f} MiB (model and optimizer tensors), {free / 2**20:.1f} MiB are free now. The "
        f"unfinished checkpoint was removed; {kept}. Free space (or lower keep_last) and rerun the same command."
    )


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the disk is full); the message says what to do."""

    user_error = True


_DIVERGED_FIX = (
    "Training diverged: it is never saved or resumed from. Resume from an earlier checkpoint with a lower "
    "--optim.lr (or --optim.max_grad_norm), or check the data for NaN values."
)


class CheckpointCorruptError(ValueError):
    """A checkpoint file is missing, truncated or unreadable."""


def _load_torch(file: Path, **kwargs):
    if not file.is_file():
        raise CheckpointCorruptError(
            f"checkpoint file {file} is missing; the checkpoint is incomplete. Resume from an earlier one."
        )
    try:
        return torch.load(file, weights_only=True, **kwargs)
    except Exception as err:  # torch raises several types for a damaged archive
        raise CheckpointCorruptError(f"checkpoint file {file} cannot be read ({err}).") from err


def load_checkpoint(
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    accelerator: Accelerator | None = None,
    optim_cfg: OptimizerConfig | None = None,
) -> TrainerState:
    """Restore optimizer, scheduler and this rank's RNG states; return the step and data position.

    The model is not touched: load it beforehand from ``<path>/model`` with its ``from_pretrained``.

    Args:
        optim_cfg: the run's current optimizer config: the restored optimizer and schedule follow it (a changed
            lr, weight decay, betas or eps takes effect), not the values stored in the checkpoint.
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"'{path}' is not a complete checkpoint (no {STATE_FILE}).")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointCorruptError(
            f"checkpoint '{path}' cannot be resumed: {problem}. Delete it to resume from the one before it "
            "(resume=true picks the newest intact checkpoint), or start a new run."
        )
    check_finite_safetensors(sorted((path / "model").rglob("*.safetensors")), _DIVERGED_FIX)
    info = read_json(
        state_file, "Delete this checkpoint to resume from the one before it, or start a new run."
    )
    optimizer.load_state_dict(_load_torch(path / "optimizer.pt", map_location="cpu"))
    if scheduler is not None:
        scheduler.load_state_dict(_load_torch(path / "scheduler.pt"))
    if optim_cfg is not None:
        apply_optim_config(optimizer, scheduler, optim_cfg)
    rng = _load_torch(path / "rng_states.pt")
    rank = accelerator.process_index if accelerator is not None else 0
    if len(rng) != (accelerator.num_processes if accelerator is not None else 1):
        warnings.warn(
            f"checkpoint '{path}' was written by {len(rng)} processes and is resumed by a different number; "
            "RNG streams are restored from rank 0, so the run continues but not bit-exactly.",
            stacklevel=2,
        )
        rank = 0
    set_rng_state(rng[rank])
    extra = {k: v for k, v in info.items() if k not in ("step", "world_size", "data_state")}
    return TrainerState(step=int(info["step"]), data_state=info.get("data_state", {}), extra=extra)


def optimization_state(
    params, optim_cfg: OptimizerConfig, max_steps: int, resume_from: Path | None, accelerator: Accelerator
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, TrainerState]:
    """A fresh optimizer and schedule over `params`, and the trainer state: restored (with the optimizer and
    schedule) from `resume_from` when given, else step 0.

    Args:
        params: the parameters trained.
        optim_cfg: the optimizer and schedule configuration.
        max_steps: the schedule's length in steps.
        resume_from: the checkpoint to restore, or None for a fresh start.
        accelerator: the run's accelerator (its rank picks the RNG state restored).
    """
    optimizer = build_optimizer(params, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, max_steps)
    state = TrainerState()
    if resume_from is not None:
        state = load_checkpoint(resume_from, optimizer, scheduler, accelerator, optim_cfg)
    return optimizer, scheduler, state
