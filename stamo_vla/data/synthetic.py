"""Synthetic scenes for tests, demos and benchmarks: coloured shapes at distinct positions.

They are easy to tell apart (colour, shape, position), so a working autoencoder must reconstruct each
image better from its own state than from another image's state.
"""

from __future__ import annotations

import torch

_COLORS = (
    (0.9, 0.1, 0.1),
    (0.1, 0.7, 0.1),
    (0.1, 0.2, 0.9),
    (0.9, 0.8, 0.1),
    (0.8, 0.1, 0.8),
    (0.1, 0.8, 0.8),
    (1.0, 0.5, 0.0),
    (0.5, 0.5, 0.5),
)


def shapes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """`n` images (n, 3, size, size) float in [0, 1]: one disc or square per image on a light background.

    Shape, colour and position vary with the index (cycling through colours, alternating shapes) and with
    `seed` (jittered centres and radii), so the images are pairwise distinct.

    Args:
        n: the number of images.
        size: their side in pixels.
        seed: jitters centres and radii.
    """
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8; got n={n}, size={size}")
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 3, size, size)
    for i in range(n):
        background = 0.85 + 0.1 * torch.rand(3, generator=g)
        cx, cy = (0.2 + 0.6 * torch.rand(2, generator=g)) * size
        r = size * (0.12 + 0.08 * torch.rand(1, generator=g).item())
        if i % 2 == 0:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        else:
            mask = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
        color = torch.tensor(_COLORS[(i // 2 + i) % len(_COLORS)])
        img = background.view(3, 1, 1).expand(3, size, size).clone()
        img[:, mask] = color.view(3, 1)
        images[i] = img
    return images
