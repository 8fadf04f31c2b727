"""Image reconstruction metrics in torch: PSNR and SSIM (gaussian window, as in Wang et al. 2004).

Inputs are (B, 3, H, W) float in [0, 1]; results are per image, shape (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for peak value 1.

    Args:
        a: images (B, C, H, W) in [0, 1].
        b: images of the same shape.
        eps: added to the MSE (identical images give a finite value).
    """
    _check_pair(a, b)
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (mean over the valid region and channels), data range 1.

    Args:
        a: images (B, C, H, W) in [0, 1].
        b: images of the same shape.
        window_size: the side of the Gaussian window.
        sigma: the Gaussian window's standard deviation.
    """
    _check_pair(a, b)
    a, b = a.float(), b.float()
    c = a.shape[1]
    size = min(window_size, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size, sigma, c, a.device)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a**2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b**2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)
