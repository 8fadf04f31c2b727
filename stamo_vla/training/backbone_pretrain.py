"""Self-supervised pretraining of a small DINOv2 backbone on our own frames (masked-image modeling).

The paper freezes a pretrained DINOv2-L. No weights can be downloaded here, so we make one: the same
transformers ``Dinov2Model`` architecture as a random-init backbone, trained SimMIM-style (Xie et al. 2022):
random patches are replaced by DINOv2's own ``mask_token`` and a linear head predicts the per-patch
normalized pixels of the masked patches from the last hidden state. The head is thrown away; the backbone is
saved as a transformers checkpoint directory and then frozen through ``backbone.pretrained_path``, exactly as
the paper freezes DINOv2. Departure from DINOv2's own recipe (DINO + iBOT self-distillation on 142M images):
a masked-pixel objective on a few thousand LIBERO frames, minutes on a CPU.

Health: ``relative_loss`` is the held-out masked-patch MSE over the MSE of predicting zeros (the per-patch
normalized target's mean); below 1 means the features predict unseen image content.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stamo_vla.configs import check_positive_int
from stamo_vla.stamo.configuration_stamo import BackboneConfig
from stamo_vla.stamo.pixels import imagenet_normalize, resize


@dataclass
class BackbonePretrainConfig:
    """Masked-image pretraining of the DINOv2 backbone."""

    # Optimizer steps.
    max_steps: int = 1500
    # Images per step.
    batch_size: int = 64
    # Peak AdamW learning rate (linear warmup, cosine decay to 10%).
    lr: float = 1e-3
    # AdamW weight decay.
    weight_decay: float = 0.05
    # Warmup steps of the learning rate.
    warmup_steps: int = 50
    # Share of patches masked per image.
    mask_ratio: float = 0.5
    # Largest random translation (pixels at backbone resolution) applied as augmentation.
    max_shift: int = 4
    # Seed of init, masks, batches and augmentation.
    seed: int = 0
    # Evaluate the held-out relative loss every this many steps (0: only at the end).
    eval_steps: int = 250

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size"):
            check_positive_int(f"backbone_pretrain.{name}", getattr(self, name))
        if not 0 < self.mask_ratio < 1:
            raise ValueError(
                f"backbone_pretrain.mask_ratio={self.mask_ratio} is not valid; it must be in (0, 1)"
            )
        for name in ("lr", "weight_decay", "warmup_steps", "max_shift", "eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"backbone_pretrain.{name}={getattr(self, name)} is not valid; it must be >= 0"
                )


def build_random_dinov2(cfg: BackboneConfig):
    """A trainable random-init transformers ``Dinov2Model`` with the architecture fields of `cfg`."""
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(
        Dinov2Config(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            mlp_ratio=cfg.mlp_ratio,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
        )
    )


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, patch*patch*3), patches in DINOv2's row-major order."""
    b, c, h, w = pixels.shape
    x = pixels.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaskedImageModel(nn.Module):
    """DINOv2 + a linear pixel head; `loss` is the masked-patch MSE on per-patch normalized pixels."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        p = backbone.config.patch_size
        self.head = nn.Linear(backbone.config.hidden_size, p * p * 3)

    def loss(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] at backbone resolution; mask (B, P) bool (True = masked)."""
        hidden = self.backbone(
            pixel_values=imagenet_normalize(pixels), bool_masked_pos=mask
        ).last_hidden_state
        pred = self.head(hidden[:, 1:])
        target = patchify(pixels, self.backbone.config.patch_size)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def _random_masks(batch: int, patches: int, ratio: float, g: torch.Generator) -> torch.Tensor:
    k = max(1, round(patches * ratio))
    order = torch.rand(batch, patches, generator=g).argsort(dim=1)
    return torch.zeros(batch, patches, dtype=torch.bool).scatter_(1, order[:, :k], True)


def _shift(pixels: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    if max_shift == 0:
        return pixels
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * max_shift + 1, (2,), generator=g))
    return padded[..., dy : dy + pixels.shape[-2], dx : dx + pixels.shape[-1]]


@torch.no_grad()
def relative_loss(model: MaskedImageModel, pixels: torch.Tensor, ratio: float, seed: int = 0) -> float:
    """Held-out masked-patch MSE over the MSE of predicting zeros (1.0 = nothing learned).

    Args:
        model: the masked image model.
        pixels: held-out images (B, 3, S, S).
        ratio: the fraction of patches masked.
        seed: fixes the masks.
    """
    model.eval()
    p = model.backbone.config.patch_size
    g = torch.Generator().manual_seed(seed)
    losses, baselines = [], []
    for i in range(0, len(pixels), 64):
        x = pixels[i : i + 64]
        mask = _random_masks(len(x), (x.shape[-1] // p) ** 2, ratio, g)
        losses.append(model.loss(x, mask).item() * len(x))
        baselines.append(len(x) * 1.0)  # per-patch normalized targets: predicting 0 gives MSE ~1
    model.train()
    return sum(losses) / sum(baselines)


def _lr_at(cfg: BackbonePretrainConfig, step: int) -> float:
    """The rate of 0-based `step`: linear warm-up, then cosine decay to a tenth of ``cfg.lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain_backbone(
    backbone_cfg: BackboneConfig,
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    cfg: BackbonePretrainConfig,
    log=print,
) -> tuple[nn.Module, dict]:
    """Train a random-init DINOv2 with masked-image modeling; returns (frozen backbone, metrics).

    Args:
        backbone_cfg: architecture of the backbone (its ``pretrained_path`` must be None).
        train_images, heldout_images: (N, 3, H, W) float in [0, 1] (any size: resized to the backbone's).
        cfg: optimization settings.
        log: called with one line of text per evaluation.
    """
    if backbone_cfg.pretrained_path is not None:
        raise ValueError(
            "backbone.pretrained_path is set: pretrain_backbone trains a random-init architecture"
        )
    torch.manual_seed(cfg.seed)
    size = backbone_cfg.image_size
    train = resize(train_images, size)
    heldout = resize(heldout_images, size)
    model = MaskedImageModel(build_random_dinov2(backbone_cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    g = torch.Generator().manual_seed(cfg.seed)
    patches = (size // backbone_cfg.patch_size) ** 2
    history = {
        "step": [0],
        "heldout_relative_loss": [relative_loss(model, heldout, cfg.mask_ratio, cfg.seed)],
    }
    log(f"backbone step 0: held-out relative masked loss {history['heldout_relative_loss'][-1]:.4f}")
    model.train()
    for step in range(cfg.max_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=g)
        x = _shift(train[idx], cfg.max_shift, g)
        if bool(torch.rand(1, generator=g) < 0.5):
            x = x.flip(-1)
        loss = model.loss(x, _random_masks(len(x), patches, cfg.mask_ratio, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        if (cfg.eval_steps and done % cfg.eval_steps == 0) or done == cfg.max_steps:
            history["step"].append(done)
            history["heldout_relative_loss"].append(relative_loss(model, heldout, cfg.mask_ratio, cfg.seed))
            log(
                f"backbone step {done}: train loss {loss.item():.4f}, held-out relative masked loss "
                f"{history['heldout_relative_loss'][-1]:.4f}"
            )
    backbone = model.backbone.eval().requires_grad_(False)
    return backbone, {"history": history, "final_relative_loss": history["heldout_relative_loss"][-1]}


def save_backbone(backbone: nn.Module, directory: str | os.PathLike) -> None:
    """Write the backbone as a transformers checkpoint directory (``config.json`` + safetensors)."""
    from stamo_vla.fileio import follow_umask_tree

    backbone.save_pretrained(str(directory))
    follow_umask_tree(directory)  # transformers writes its safetensors private whatever the umask
