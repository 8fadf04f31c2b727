"""Stop cleanly on SIGTERM (what cluster schedulers send before killing a job): checkpoint, then exit.

The handler only records the request; the training loop finishes its current optimizer step, saves a
checkpoint and raises `TrainingInterrupted`, so no step since the last periodic checkpoint is lost.
With several processes the request is agreed on by all ranks (one all-reduce of a flag per step), so every
rank stops after the same step and takes part in the checkpoint's collectives.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class TrainingInterrupted(SystemExit):
    """Raised after the checkpoint is written; exits the process with `SIGTERM_EXIT_CODE` unless caught."""

    def __init__(self, checkpoint, step: int) -> None:
        super().__init__(SIGTERM_EXIT_CODE)
        self.checkpoint, self.step = checkpoint, step

    def __str__(self) -> str:
        return f"stopped by SIGTERM after step {self.step}; checkpoint saved to {self.checkpoint}"


class StopRequest:
    """Whether SIGTERM arrived; `requested(accelerator)` agrees across ranks."""

    def __init__(self) -> None:
        self.received = False

    def _handle(self, signum, frame) -> None:
        self.received = True

    def requested(self, accelerator=None) -> bool:
        if accelerator is None or accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Install a SIGTERM handler for the duration of the block (main thread only; else a no-op)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request._handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
