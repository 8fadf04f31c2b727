"""Training logger: tqdm bar with a running loss, tensorboard scalars, ``metrics.jsonl``, optional wandb.

Only the main process logs; on other ranks every method is a no-op, so callers need no rank checks. Use it as a
context manager (``with TrainLogger(...) as log:``) so it closes however the run ends.
"""

from __future__ import annotations

import os
import sys
import types
from collections import deque
from pathlib import Path


def _tensorboard_without_tensorflow() -> None:
    """Make tensorboard use its built-in TF stub instead of importing tensorflow.

    tensorboard imports the real tensorflow whenever it is installed (seconds of start-up and GBs of
    memory, and TF must never share a process with MuJoCo rendering). The presence of the module
    ``tensorboard.compat.notf`` is tensorboard's own switch (its ``no_tensorflow`` build target) for the stub.
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class TrainLogger:
    """Log scalar metrics of a run.

    Args:
        run_dir: tensorboard event files go to ``<run_dir>/tensorboard``, metric records to
            ``<run_dir>/metrics.jsonl``.
        total_steps: length of the progress bar.
        start_step: where a resumed run starts.
        enabled: False on non-main ranks.
        wandb_project: log to Weights & Biases under this project (None: off; imported only when set).
        config: run config (a dict) recorded by wandb.
        running_window: number of recent steps averaged for the bar's running loss.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        wandb_project: str | None = None,
        config: dict | None = None,
        running_window: int = 20,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._recent: deque[float] = deque(maxlen=running_window)
        self._bar = self._tb = self._wandb = None
        if not enabled:
            return
        _tensorboard_without_tensorflow()
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        if wandb_project:
            from stamo_vla.optional import require

            self._wandb = require("wandb", "logging to Weights & Biases (wandb_project is set)")
            self._wandb.init(
                project=wandb_project, config=config or {}, dir=str(self.run_dir), resume="allow"
            )

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Record `metrics` at `step` under ``<prefix>/<name>``; train losses advance the progress bar.

        Args:
            step: the optimizer step.
            metrics: {name: value}.
            prefix: the group of the metrics (train, eval, health, ...).
        """
        if not self.enabled:
            return
        from stamo_vla.fileio import append_jsonl

        scalars = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, **scalars})
        if prefix == "train":
            if "loss" in metrics:
                self._recent.append(float(metrics["loss"]))
            self._bar.n = step
            running = sum(self._recent) / max(1, len(self._recent))
            self._bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            self._bar.refresh()
        else:
            self._bar.write(f"step {step} {prefix}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def __enter__(self) -> TrainLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
