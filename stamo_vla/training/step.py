"""One optimizer step with gradient accumulation, shared by every recipe (fine-tuning, base training, StaMo
pretraining)."""

from __future__ import annotations

import math
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
    step: int | None = None,
) -> dict[str, float]:
    """Forward and backward over ``micro_batches``, then (clip and) step once. The model owns its loss:
    ``model(batch) -> (loss, metrics)``.

    Each micro-batch's loss is scaled by ``1 / len(micro_batches)``, so the accumulated gradient is the mean
    over them; under DDP the gradients are all-reduced only on the last one (``accelerator.no_sync``).
    Pass the scheduler here rather than through ``accelerator.prepare``: accelerate's scheduler wrapper
    steps once per process, which would make the schedule depend on the number of GPUs.

    A non-finite loss or gradient stops training before the optimizer steps (`TrainingDiverged`), so the
    weights stay as they were and are never saved with NaN in them.

    Args:
        micro_batches: the batches of one optimizer step (one batch: no accumulation).
        step: the 1-based number of this step, for the error message.

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
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if max_grad_norm is not None:  # the norm before clipping
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        grad_norm = out["grad_norm"] = float(clip(params, max_grad_norm))
    else:  # only measured; gradients are synced by now, so every rank sees the same norm
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    if not (math.isfinite(out["loss"]) and math.isfinite(grad_norm)):
        raise TrainingDiverged(divergence_message(step, out, grad_norm, optimizer, micro_batches))
    out["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return out


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient of a training step is NaN or inf; the message names the step and likely causes."""

    user_error = True  # the CLI prints the message alone
    exit_code = 1


def divergence_message(
    step: int | None, metrics: dict[str, float], grad_norm: float, optimizer: torch.optim.Optimizer, batches
) -> str:
    """Which values went non-finite at `step`, and the causes that fit what is seen (config first, then data).

    Args:
        step: the 1-based step (None: not known).
        metrics: the step's loss and metrics (means over its micro-batches).
        grad_norm: the global gradient norm before clipping.
        optimizer: read for its learning rate and eps.
        batches: the step's micro-batches, searched for NaN/inf inputs.
    """
    bad = [f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v)]
    seen = (
        ", ".join(bad)
        if bad
        else f"the loss is finite ({metrics['loss']:.4g}) but the gradient norm is {grad_norm}"
    )
    group = optimizer.param_groups[0]
    causes = []
    if not math.isfinite(group["lr"]) or not math.isfinite(group.get("initial_lr", group["lr"])):
        causes.append(f"the learning rate is {group['lr']} (--optim.lr)")
    if group.get("eps", 1.0) == 0:
        causes.append("--optim.eps 0 divides by zero where a gradient is 0")
    tensors = [
        (k, v) for b in batches if isinstance(b, dict) for k, v in b.items() if isinstance(v, torch.Tensor)
    ]
    nan_inputs = sorted({k for k, v in tensors if v.is_floating_point() and not bool(v.isfinite().all())})
    if nan_inputs:
        causes.append(
            f"the batch holds NaN/inf in {nan_inputs} (e.g. NaN states in a target-cache shard: rebuild it with "
            "`stamo-vla cache-targets ... --overwrite true`)"
        )
    if bad:
        causes.append("a non-finite loss weight (--adapter.lambda_*)")
    causes.append("a learning rate too high for this model (lower --optim.lr, or set --optim.max_grad_norm)")
    where = f"at step {step}" if step is not None else ""
    return (
        f"training diverged {where}: {seen}. The optimizer did not step, so no weight took a NaN; nothing of this "
        f"step is saved. Likely causes: {'; '.join(dict.fromkeys(causes))}. Fix the cause and rerun: training "
        "resumes from the last checkpoint."
    )
