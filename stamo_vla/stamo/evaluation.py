"""Held-out evaluation of a StaMo autoencoder and its sample sheets.

"Shuffled" metrics decode each image from *another* image's state (states rolled by one) with the same
noise: a model whose states carry the image must score clearly better on its own states.
"""

from __future__ import annotations

import os

import torch

from stamo_vla.stamo.metrics import psnr, ssim
from stamo_vla.stamo.motion import interpolate
from stamo_vla.stamo.pixels import resize


@torch.no_grad()
def evaluate(
    model, pixels: torch.Tensor, steps: int | None = None, seed: int = 0, batch_size: int = 16
) -> dict[str, float]:
    """Reconstruction metrics on `pixels` (B >= 2, 3, H, W) in [0, 1].

    Returns means over images of: ``loss`` (flow loss, fixed noise), ``psnr``/``ssim`` (decode of own
    state vs input), ``psnr_shuffled``/``ssim_shuffled``, ``psnr_vae`` (the frozen VAE's own round trip:
    the ceiling), ``latent_mse`` / ``latent_mse_shuffled`` (sampled vs true latents), and ``state_spread``
    (std of the states across images over their mean magnitude).
    """
    if pixels.shape[0] < 2:
        raise ValueError(f"evaluate needs at least 2 images for the shuffled baseline; got {pixels.shape[0]}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    target = resize(pixels, model.config.image_size).to(device)
    states = torch.cat([model.encode(target[i : i + batch_size]) for i in range(0, len(target), batch_size)])
    shuffled = states.roll(1, dims=0)
    z0 = model.decoder.images_to_latents(target)
    out: dict[str, list[torch.Tensor]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        out.setdefault(name, []).append(value.float().cpu())

    for i in range(0, len(target), batch_size):
        sl = slice(i, i + batch_size)
        g = torch.Generator().manual_seed(seed + i)
        loss, _ = model.decoder.loss(z0[sl], states[sl], generator=g)
        add("loss", loss.view(1).expand(len(target[sl])))
        for tag, s in (("", states[sl]), ("_shuffled", shuffled[sl])):
            lat = model.decoder.sample_latents(s, steps, generator=torch.Generator().manual_seed(seed + i))
            img = model.decoder.latents_to_images(lat)
            add("psnr" + tag, psnr(img, target[sl]))
            add("ssim" + tag, ssim(img, target[sl]))
            add("latent_mse" + tag, ((lat - z0[sl]) ** 2).flatten(1).mean(1))
        add("psnr_vae", psnr(model.decoder.latents_to_images(z0[sl]), target[sl]))
    model.train(was_training)
    metrics = {k: torch.cat(v).mean().item() for k, v in out.items()}
    # how much the states differ between images, relative to their size: near 0 means the encoder collapsed to one
    # state (the decoder then reconstructs every image alike and psnr == psnr_shuffled)
    metrics["state_spread"] = (states.std(0).mean() / states.abs().mean().clamp(min=1e-12)).item()
    return metrics


@torch.no_grad()
def save_sample_sheet(
    model,
    pixels: torch.Tensor,
    path: str | os.PathLike,
    steps: int | None = None,
    num_interp: int = 8,
    seed: int = 0,
) -> None:
    """PNG with rows: originals | reconstructions | interpolation from image 0 to image 1 (`num_interp` states)."""
    from stamo_vla.viz.sheets import save_sheet

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    target = resize(pixels, model.config.image_size).to(device)
    states = model.encode(target)
    recon = model.decode(states, steps=steps, generator=torch.Generator().manual_seed(seed))
    strip_states = interpolate(states[0], states[1 % len(states)], num_interp)
    # one noise for the whole strip: frames then differ only by their interpolated state
    noise = torch.randn(model.decoder.latent_shape(1), generator=torch.Generator().manual_seed(seed))
    strip_latents = model.decoder.sample_latents(
        strip_states, steps, noise=noise.expand(num_interp, -1, -1, -1)
    )
    strip = model.decoder.latents_to_images(strip_latents)
    model.train(was_training)
    save_sheet([target, recon, strip], path, labels=["input", "recon", "interp"])
