"""Upstream OpenVLA image augmentation, TF-free (numpy + PIL on uint8 frames), deterministic given a seed.

Order and ranges as in OpenVLA's ``image_augment_kwargs`` (docs/reference/openvla.md §1.4): random_resized_crop
(scale 0.9, ratio 1, bilinear, back to the input size), brightness ±0.2, contrast [0.8, 1.2], saturation
[0.8, 1.2], hue ±0.05; values are clipped to [0, 1] after every op (as dlimp does). One `AugmentParams` draw is
applied to every image of a sample (upstream uses one seed per frame for all its cameras).

Faithful quirk: dlimp draws the crop's y and x offsets with the same stateless seed, so both use the same
uniform number (``y = u (1 - h)``, ``x = u (1 - w)``); we keep that.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from stamo_vla.configs import check_range


@dataclasses.dataclass
class ImageAugConfig:
    """Ranges of the training-time image augmentation (defaults = upstream OpenVLA)."""

    crop_scale: float = 0.9  # area fraction kept by random_resized_crop (upstream scale=[0.9, 0.9])
    crop_ratio: float = 1.0  # aspect ratio of the crop (upstream ratio=[1.0, 1.0])
    brightness: float = 0.2  # additive brightness delta drawn from [-b, b] (images in [0, 1])
    contrast: tuple[float, float] = (0.8, 1.2)  # contrast factor range
    saturation: tuple[float, float] = (0.8, 1.2)  # saturation factor range
    hue: float = 0.05  # hue shift drawn from [-h, h] (fraction of the colour wheel)

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must be in (0, 1]")
        check_range("crop_ratio", self.crop_ratio, low=0, low_open=True)
        if not 0.0 <= self.brightness <= 1.0:
            raise ValueError(f"brightness={self.brightness} must be in [0, 1]")
        for name in ("contrast", "saturation"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"{name}={getattr(self, name)} must be (low, high) with 0 <= low <= high")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must be in [0, 0.5]")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters, shared by all images of a sample."""

    crop_box: tuple[float, float, float, float]  # (y0, x0, y1, x1) relative to the image size
    brightness: float
    contrast: float
    saturation: float
    hue: float


def sample_params(rng: np.random.Generator, cfg: ImageAugConfig) -> AugmentParams:
    """Draw augmentation parameters from `rng`."""
    h = float(np.clip(np.sqrt(cfg.crop_scale / cfg.crop_ratio), 0.0, 1.0))
    w = float(np.clip(np.sqrt(cfg.crop_scale * cfg.crop_ratio), 0.0, 1.0))
    u = rng.uniform()  # shared by both offsets, as in dlimp (see module docstring)
    y0, x0 = u * (1.0 - h), u * (1.0 - w)
    return AugmentParams(
        crop_box=(y0, x0, y0 + h, x0 + w),
        brightness=float(rng.uniform(-cfg.brightness, cfg.brightness)),
        contrast=float(rng.uniform(*cfg.contrast)),
        saturation=float(rng.uniform(*cfg.saturation)),
        hue=float(rng.uniform(-cfg.hue, cfg.hue)),
    )


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = np.where(c > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    # closed form: channel n in (5, 3, 1) for (r, g, b) is v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (np.array([5.0, 3.0, 1.0], dtype=hsv.dtype) + 6.0 * h) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def augment_image(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Apply one parameter draw to an (H, W, 3) uint8 image; returns uint8 of the same size."""
    height, width = image.shape[:2]
    y0, x0, y1, x1 = params.crop_box
    cropped = Image.fromarray(image).resize(
        (width, height), Image.BILINEAR, box=(x0 * width, y0 * height, x1 * width, y1 * height)
    )
    x = np.asarray(cropped, dtype=np.float32) / 255.0
    x = np.clip(x + params.brightness, 0.0, 1.0)
    mean = x.mean(axis=(0, 1), keepdims=True)  # per-channel mean, like tf.image.adjust_contrast
    x = np.clip((x - mean) * params.contrast + mean, 0.0, 1.0)
    # saturation then hue in one HSV pass: converting back to RGB in between is the identity for valid
    # HSV values, so the result equals applying the two ops one after the other
    hsv = _rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * params.saturation, 0.0, 1.0)
    hsv[..., 0] = (hsv[..., 0] + params.hue) % 1.0
    x = np.clip(_hsv_to_rgb(hsv), 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8)
