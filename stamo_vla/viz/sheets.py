"""Image sheets: rows of equally sized images written as one PNG (e.g. originals | reconstructions | strip)."""

from __future__ import annotations

import os

import numpy as np
import torch

from stamo_vla.fileio import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8."""
    return (
        (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )


def grid(rows: list[torch.Tensor], pad: int = 2, label_width: int = 0) -> np.ndarray:
    """Stack rows of (n_i, 3, H, W) images into one (rows*H, max_n*W, 3) uint8 canvas (white padding).

    Args:
        rows: rows of images, each (n_i, 3, H, W) in [0, 1].
        pad: white pixels between images.
        label_width: blank pixels left of each row for a label.
    """
    if not rows:
        raise ValueError("grid needs at least one row of images")
    h, w = rows[0].shape[-2:]
    if any(r.shape[-2:] != (h, w) for r in rows):
        raise ValueError(f"all images must share one size; got {[tuple(r.shape[-2:]) for r in rows]}")
    cols = max(r.shape[0] for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, label_width + cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(row)):
            y, x = pad + i * (h + pad), label_width + pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_sheet(rows: list[torch.Tensor], path: str | os.PathLike, labels: list[str] | None = None) -> None:
    """Write `rows` as a PNG (atomically), with an optional text label left of each row.

    Args:
        rows: rows of images, each (n_i, 3, H, W) in [0, 1].
        path: the PNG written.
        labels: one label per row (None: no labels).
    """
    from PIL import Image, ImageDraw

    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    label_width = 8 + 6 * max((len(s) for s in labels), default=0) if labels else 0
    image = Image.fromarray(grid(rows, label_width=label_width))
    if labels:
        draw = ImageDraw.Draw(image)
        h = rows[0].shape[-2]
        for i, text in enumerate(labels):
            draw.text((4, 2 + i * (h + 2) + h // 2 - 5), text, fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
