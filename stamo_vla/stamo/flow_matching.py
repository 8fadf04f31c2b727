"""Rectified flow / flow matching, as in SD3: z_t = (1 - sigma) z0 + sigma * eps, velocity target eps - z0.

sigma = 0 is the clean latent, sigma = 1 pure noise; the DiT sees timestep = sigma * num_train_timesteps.
"""

from __future__ import annotations

import torch

from stamo_vla.stamo.configuration_stamo import FlowMatchingConfig


def _draw(
    kind: str, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    # With a generator, draw on its device and move, so a CPU generator reproduces on any device.
    draw_device = generator.device if generator is not None else device
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=draw_device).to(device)


def sample_sigmas(
    batch: int, cfg: FlowMatchingConfig, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training noise levels (B,) in (0, 1): logit-normal (SD3) or uniform.

    Args:
        batch: the number of levels.
        cfg: the flow-matching configuration (its sigma distribution).
        device: the device of the result.
        generator: fixes the draw (None: the global generator).
    """
    if cfg.sigma_sampling == "logit_normal":
        return torch.sigmoid(_draw("normal", (batch,), generator, device) * cfg.logit_std + cfg.logit_mean)
    return _draw("uniform", (batch,), generator, device)


def sample_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return _draw("normal", tuple(like.shape), generator, like.device).to(like.dtype)


def interpolate_noise(z0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - sigma) z0 + sigma * noise, with sigma (B,) broadcast over the latent dims.

    Args:
        z0: clean latents (B, ...).
        noise: Gaussian noise of the same shape.
        sigmas: noise levels (B,).
    """
    s = sigmas.view(-1, *([1] * (z0.ndim - 1))).to(z0.dtype)
    return (1 - s) * z0 + s * noise


def velocity_target(z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d z_t / d sigma = noise - z0."""
    return noise - z0
