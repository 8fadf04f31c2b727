"""The image contract of every StaMo entry point: ``(B, 3, H, W)`` floating point in ``[0, 1]``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# DINOv2 was trained on ImageNet-normalized inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Values may overshoot [0, 1] by rounding (e.g. after a bilinear resize); anything beyond this is a bug.
_RANGE_TOLERANCE = 1e-3


def uint8_to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 channels-last frames, (H, W, 3) or (B, H, W, 3), numpy or torch -> float (3, H, W) or (B, 3, H, W)
    in [0, 1]: the StaMo image contract."""
    if not isinstance(images, torch.Tensor):
        array = np.ascontiguousarray(images)
        images = torch.from_numpy(array if array.flags.writeable else array.copy())
    return images.movedim(-1, -3).float() / 255.0


def check_pixels(images: object, name: str = "images") -> torch.Tensor:
    """Validate the StaMo image contract and return the tensor unchanged.

    Raises:
        TypeError: `images` is not a floating-point tensor.
        ValueError: wrong rank, channel count or value range.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (B, 3, H, W) float in [0, 1]; got {type(images).__name__}"
        )
    if not images.is_floating_point():
        hint = ""
        if images.dtype == torch.uint8:
            hint = " For uint8 (B, H, W, 3) frames use `images.permute(0, 3, 1, 2).float() / 255`."
        raise TypeError(f"{name} must be floating point in [0, 1]; got dtype {images.dtype}.{hint}")
    if images.ndim != 4 or images.shape[1] != 3:
        hint = (
            " It looks channels-last: permute(0, 3, 1, 2)."
            if images.ndim == 4 and images.shape[-1] == 3
            else ""
        )
        raise ValueError(f"{name} must have shape (B, 3, H, W); got {tuple(images.shape)}.{hint}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        hint = (
            " Values look like 0..255: divide by 255."
            if hi > 2
            else " Values look like [-1, 1]: use (x + 1) / 2."
        )
        raise ValueError(f"{name} must lie in [0, 1]; got min {lo:.3f}, max {hi:.3f}.{hint}")
    return images


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, 3, H, W) to (B, 3, size, size) with antialiased bilinear filtering; no-op when equal."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std
