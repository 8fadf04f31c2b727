"""AdamW with optional linear warm-up, constant / cosine / step decay, and gradient clipping settings."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from stamo_vla.configs import check_choice, check_positive_int, check_range

DECAYS = ("constant", "cosine", "step")


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule."""

    # Peak learning rate.
    lr: float = 1e-4
    # AdamW weight decay (decoupled), applied to weight matrices only; 0.01 is torch's / upstream's default.
    weight_decay: float = 0.01
    # AdamW betas.
    betas: tuple[float, float] = (0.9, 0.999)
    # AdamW epsilon.
    eps: float = 1e-8
    # Linear warm-up from 0 to lr over this many steps (0: none).
    warmup_steps: int = 0
    # Decay after warm-up: constant | cosine (to min_lr_ratio * lr at the last step) | step (x decay_gamma).
    decay: str = "constant"
    # Floor of the cosine decay, as a fraction of lr.
    min_lr_ratio: float = 0.0
    # Step decay: multiply the lr by decay_gamma every decay_step_size steps after warm-up.
    decay_step_size: int = 1000
    # Step decay factor.
    decay_gamma: float = 0.1
    # Clip the global gradient norm to this value (None: no clipping).
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        check_choice("optim.decay", self.decay, DECAYS)
        check_range("optim.lr", self.lr, low=0, low_open=True)
        check_range("optim.eps", self.eps, low=0, low_open=True)  # 0 divides by zero where a gradient is 0
        check_range("optim.weight_decay", self.weight_decay, low=0)
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas={self.betas!r} is not valid; give two numbers, e.g. [0.9, 0.999]")
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, low=0, high=1, high_open=True)
        check_positive_int("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_positive_int("optim.decay_step_size", self.decay_step_size)
        # a negative factor flips the learning rate's sign (gradient ascent); above 1 it grows without end
        check_range("optim.decay_gamma", self.decay_gamma, low=0, high=1, low_open=True)
        if self.max_grad_norm is not None:
            check_range("optim.max_grad_norm", self.max_grad_norm, low=0, low_open=True)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable `params`; biases and norm scales (ndim < 2) get no weight decay."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer got no trainable parameters (all have requires_grad=False)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def apply_optim_config(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR | None,
    cfg: OptimizerConfig,
) -> None:
    """Make a restored optimizer and schedule follow `cfg` (a resumed run's current config), not the values the
    checkpoint stored: lr (and its place on the schedule), weight decay, betas and eps. Unchanged values are
    set to what they already were, so an unchanged resume stays bit-exact.

    Args:
        optimizer: the restored optimizer.
        scheduler: its restored schedule, or None.
        cfg: the current optimizer configuration.
    """
    for group in optimizer.param_groups:
        decayed = all(p.ndim >= 2 for p in group["params"])  # as `build_optimizer` grouped them
        group["weight_decay"] = cfg.weight_decay if decayed else 0.0
        group["betas"], group["eps"] = tuple(cfg.betas), cfg.eps
        group["initial_lr"] = cfg.lr
    if scheduler is None:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        return
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = cfg.lr * fn(scheduler.last_epoch)


def lr_factor(step: int, cfg: OptimizerConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based).

    Args:
        step: the optimizer step (0-based).
        cfg: the optimizer configuration (warm-up and decay).
        total_steps: the schedule's length.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    after = step - cfg.warmup_steps
    if cfg.decay == "cosine":
        span = max(1, total_steps - cfg.warmup_steps - 1)
        progress = min(1.0, after / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.decay == "step":
        return cfg.decay_gamma ** (after // cfg.decay_step_size)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule following `lr_factor`.

    Args:
        optimizer: the optimizer scheduled.
        cfg: the optimizer configuration (warm-up and decay).
        total_steps: the schedule's length.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
