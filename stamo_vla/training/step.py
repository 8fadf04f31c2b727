"""One optimizer step, shared by every recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


def train_step(
    model: torch.nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    accelerator: Accelerator | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """Forward, backward, (clip), step. The model owns its loss: ``model(batch) -> (loss, metrics)``.

    Pass the scheduler here rather than through ``accelerator.prepare``: accelerate's scheduler wrapper
    steps once per process, which would make the schedule depend on the number of GPUs.

    Returns:
        ``metrics`` plus ``loss``, ``lr`` and, when clipping, ``grad_norm`` (before clipping).
    """
    model.train()
    loss, metrics = model(batch)
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    out = {"loss": loss.item(), **metrics}
    if max_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        out["grad_norm"] = float(clip(params, max_grad_norm))
    out["lr"] = optimizer.param_groups[0]["lr"]  # the rate this step used
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out
