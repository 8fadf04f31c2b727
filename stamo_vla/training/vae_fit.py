"""Fit a random-init AutoencoderKL on the training images, then freeze it.

The paper decodes in SD3's pretrained VAE latent space. Where no pretrained VAE is available (tiny
presets, tests: nothing can be downloaded here), a random VAE would decode any latent to noise, so
pixel metrics would mean nothing. This fits the small VAE first as a plain KL autoencoder; it is then
frozen exactly like a pretrained one, and its latent statistics set the scaling/shift factors.
"""

from __future__ import annotations

import torch
from torch import nn

from stamo_vla.stamo.metrics import psnr


def fit_vae(
    vae: nn.Module,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
) -> list[float]:
    """Train `vae` in place to reconstruct `images` (N, 3, S, S) in [0, 1]; returns the loss per step.

    The VAE is frozen again (eval, requires_grad False) on return.

    Args:
        vae: the VAE trained.
        images: training images (N, 3, S, S) in [0, 1].
        steps: optimizer steps.
        batch_size: images per step.
        lr: the learning rate.
        kl_weight: the weight of the KL term.
        seed: seeds the batches.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    vae.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    try:
        for _ in range(steps):
            idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
            x = images[idx].to(device) * 2 - 1
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=None)).sample
            loss = nn.functional.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        vae.eval()
        vae.requires_grad_(False)
    return losses


@torch.no_grad()
def latent_statistics(vae: nn.Module, images: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(scaling_factor, shift_factor) that give the latents of `images` zero mean and unit variance.

    Args:
        vae: the VAE.
        images: images (N, 3, S, S) in [0, 1].
        batch_size: images per encoder call.
    """
    device = next(vae.parameters()).device
    latents = torch.cat(
        [
            vae.encode(images[i : i + batch_size].to(device) * 2 - 1).latent_dist.mean.float()
            for i in range(0, len(images), batch_size)
        ]
    )
    std = latents.std().item()
    return 1.0 / max(std, 1e-6), latents.mean().item()


@torch.no_grad()
def vae_health(vae: nn.Module, train: torch.Tensor, heldout: torch.Tensor, batch_size: int = 64) -> dict:
    """Held-out PSNR of the VAE round trip next to the PSNR of the mean training frame (both in dB).

    A useful VAE must beat the mean frame clearly, or a decoder that ignores its state looks as good as one
    that uses it. Images are (N, 3, S, S) in [0, 1].

    Args:
        vae: the VAE.
        train: training images (N, 3, S, S) in [0, 1] (their mean is the floor's prediction).
        heldout: held-out images.
        batch_size: images per VAE call.
    """
    device = next(vae.parameters()).device
    recon = []
    for i in range(0, len(heldout), batch_size):
        x = heldout[i : i + batch_size].to(device) * 2 - 1
        out = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        recon.append(((out + 1) / 2).clamp(0, 1).cpu())
    mean_frame = train.float().mean(0, keepdim=True).expand_as(heldout)
    return {
        "psnr_heldout": psnr(torch.cat(recon), heldout.float()).mean().item(),
        "psnr_mean_frame": psnr(mean_frame, heldout.float()).mean().item(),
    }
