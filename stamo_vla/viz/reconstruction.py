"""Held-out evaluation of a StaMo autoencoder and its sample sheets.

"Shuffled" metrics decode each image from *another*, randomly paired image's state (a seeded derangement) with
the same noise: a model whose states carry the image must score clearly better on its own states. "Neighbour"
metrics pair each image with the previous one in the given order instead; when images are ordered by episode and
time that is usually a nearby frame of the same episode, a much harder baseline (only what changed in between,
e.g. the arm pose, can make a difference).
"""

from __future__ import annotations

import os

import torch

from stamo_vla.stamo.metrics import psnr, ssim
from stamo_vla.stamo.motion import interpolate
from stamo_vla.stamo.pixels import resize
from stamo_vla.viz.sheets import save_sheet


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded random permutation with no fixed point: image i gets the state of image perm[i] != i."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2; got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


@torch.no_grad()
def evaluate(
    model, pixels: torch.Tensor, steps: int | None = None, seed: int = 0, batch_size: int = 16
) -> dict[str, float]:
    """Reconstruction metrics on `pixels` (B >= 2, 3, H, W) in [0, 1].

    Returns means over images of: ``loss`` / ``loss_shuffled`` (flow loss from the own / another image's
    state, same noise), ``psnr``/``ssim`` (decode of own state vs input), ``psnr_shuffled``/``ssim_shuffled``
    (randomly paired states), ``psnr_neighbour``/``ssim_neighbour`` (the previous image's state),
    ``psnr_vae`` (the frozen VAE's own round trip: the ceiling), ``psnr_mean_frame`` (the mean of these images
    as the prediction: the floor a decoder that ignores its state reaches), ``latent_mse`` /
    ``latent_mse_shuffled`` (sampled vs true latents), and the spread measures of `state_spread_metrics`.

    Args:
        model: the StaMo autoencoder.
        pixels: images (B >= 2, 3, H, W) in [0, 1].
        steps: Euler steps when decoding (None: the model's default).
        seed: fixes noise and the pairing.
        batch_size: images per forward pass.
    """
    if pixels.shape[0] < 2:
        raise ValueError(f"evaluate needs at least 2 images for the shuffled baseline; got {pixels.shape[0]}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    target = resize(pixels, model.config.image_size).to(device)
    states = torch.cat([model.encode(target[i : i + batch_size]) for i in range(0, len(target), batch_size)])
    shuffled = states[derangement(len(states), seed).to(states.device)]
    neighbour = states.roll(1, dims=0)
    z0 = model.decoder.images_to_latents(target)
    out: dict[str, list[torch.Tensor]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        out.setdefault(name, []).append(value.float().cpu())

    for i in range(0, len(target), batch_size):
        sl = slice(i, i + batch_size)
        for tag, s in (("", states[sl]), ("_shuffled", shuffled[sl])):
            g = torch.Generator().manual_seed(seed + i)
            loss, _ = model.decoder.loss(z0[sl], s, generator=g)
            add("loss" + tag, loss.view(1).expand(len(target[sl])))
        for tag, s in (("", states[sl]), ("_shuffled", shuffled[sl]), ("_neighbour", neighbour[sl])):
            lat = model.decoder.sample_latents(s, steps, generator=torch.Generator().manual_seed(seed + i))
            img = model.decoder.latents_to_images(lat)
            add("psnr" + tag, psnr(img, target[sl]))
            add("ssim" + tag, ssim(img, target[sl]))
            add("latent_mse" + tag, ((lat - z0[sl]) ** 2).flatten(1).mean(1))
        add("psnr_vae", psnr(model.decoder.latents_to_images(z0[sl]), target[sl]))
    add("psnr_mean_frame", psnr(target.mean(0, keepdim=True).expand_as(target), target))
    raw = torch.cat(
        [
            model.encoder.compressor(model.encoder.features(target[i : i + batch_size])).float()
            for i in range(0, len(target), batch_size)
        ]
    )
    model.train(was_training)
    metrics = {k: torch.cat(v).mean().item() for k, v in out.items()}
    metrics.update(state_spread_metrics(states))
    metrics.update({f"raw_{k}": v for k, v in state_spread_metrics(raw).items()})
    return metrics


def state_spread_metrics(states: torch.Tensor) -> dict[str, float]:
    """How much states (B, N, D) differ between images.

    ``state_var_fraction``: share of the states' energy that varies between images (variance over mean
    square; near 0 means the encoder collapsed to one constant state plus tiny variations).
    ``state_spread``: std across images averaged over features; the constant offset plays no part.
    ``state_effective_rank``: participation ratio of the centered states' covariance spectrum (1 = they
    vary along one direction only); offset- and scale-free.
    """
    x = states.flatten(1).double()
    centered = x - x.mean(0, keepdim=True)
    var = centered.pow(2).mean(0)
    eig = torch.linalg.svdvals(centered) ** 2
    return {
        "state_var_fraction": (var.sum() / x.pow(2).mean(0).sum().clamp(min=1e-30)).item(),
        "state_spread": var.sqrt().mean().item(),
        "state_effective_rank": (eig.sum() ** 2 / eig.pow(2).sum().clamp(min=1e-30)).item(),
    }


@torch.no_grad()
def save_sample_sheet(
    model,
    pixels: torch.Tensor,
    path: str | os.PathLike,
    steps: int | None = None,
    num_interp: int = 8,
    seed: int = 0,
) -> None:
    """PNG with rows: originals | decoded from their own states | decoded from a randomly paired image's state
    (the shuffled baseline of `evaluate`, same noise) | interpolation from image 0 to image 1 (`num_interp` states).

    Args:
        model: the StaMo autoencoder.
        pixels: images (B >= 2, 3, H, W) in [0, 1].
        path: the PNG written.
        steps: Euler steps when decoding (None: the model's default).
        num_interp: states in the interpolation row.
        seed: fixes noise and the pairing.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    target = resize(pixels, model.config.image_size).to(device)
    states = model.encode(target)
    recon = model.decode(states, steps=steps, generator=torch.Generator().manual_seed(seed))
    shuffled = model.decode(
        states.roll(1, dims=0), steps=steps, generator=torch.Generator().manual_seed(seed)
    )
    strip_states = interpolate(states[0], states[1 % len(states)], num_interp)
    # one noise for the whole strip: frames then differ only by their interpolated state
    noise = torch.randn(model.decoder.latent_shape(1), generator=torch.Generator().manual_seed(seed))
    strip_latents = model.decoder.sample_latents(
        strip_states, steps, noise=noise.expand(num_interp, -1, -1, -1)
    )
    strip = model.decoder.latents_to_images(strip_latents)
    model.train(was_training)
    save_sheet([target, recon, shuffled, strip], path, labels=["input", "own", "shuffled", "interp"])
