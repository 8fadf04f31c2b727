"""One optimizer step with gradient accumulation, shared by every recipe (fine-tuning, base training, StaMo
pretraining)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


def train_step(
    model: torch.nn.Module,
    micro_batches: Sequence[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    accelerator: Accelerator | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """Forward and backward over ``micro_batches``, then (clip and) step once. The model owns its loss:
    ``model(batch) -> (loss, metrics)``.

    Each micro-batch's loss is scaled by ``1 / len(micro_batches)``, so the accumulated gradient is the mean
    over them; under DDP the gradients are all-reduced only on the last one (``accelerator.no_sync``).
    Pass the scheduler here rather than through ``accelerator.prepare``: accelerate's scheduler wrapper
    steps once per process, which would make the schedule depend on the number of GPUs.

    Args:
        micro_batches: the batches of one optimizer step (one batch: no accumulation).

    Returns:
        ``loss`` and the model's metrics (each the mean over the micro-batches), ``lr`` (the rate this step
        used) and, when clipping, ``grad_norm`` (before clipping).
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch; got none")
    model.train()
    n = len(micro_batches)
    out: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        last = i == n - 1
        sync = nullcontext() if accelerator is None or last else accelerator.no_sync(model)
        with sync, accelerator.autocast() if accelerator is not None else nullcontext():
            loss, metrics = model(batch)
        scaled = loss / n
        if accelerator is not None:
            accelerator.backward(scaled)
        else:
            scaled.backward()
        for k, v in {"loss": loss.item(), **metrics}.items():
            out[k] = out.get(k, 0.0) + v / n
    if max_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        out["grad_norm"] = float(clip(params, max_grad_norm))
    out["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out
