"""StaMo diffusion autoencoder: encoder (frozen DINOv2 + compressor) and DiT decoder, trained jointly.

Input contract everywhere: images (B, 3, H, W) float in [0, 1]; they are resized to ``config.image_size``
for the VAE and to ``config.backbone.image_size`` for DINOv2.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from stamo_vla.stamo.configuration_stamo import StaMoConfig
from stamo_vla.stamo.modeling_decoder import StaMoDecoder
from stamo_vla.stamo.modeling_encoder import ENCODER_PREFIX, StaMoEncoder
from stamo_vla.stamo.pixels import check_pixels, resize
from stamo_vla.stamo.weights import load_state, load_strict, save_state, select

DECODER_PREFIX = "decoder."


class StaMoAutoencoder(nn.Module):
    """Image -> (B, N, D) state -> image. `forward(images)` returns ``(loss, metrics)`` for training.

    Args:
        config: the StaMo config.
        load_transformer_weights: load a pretrained SD3 transformer from its path (False when a StaMo
            checkpoint provides the weights).
    """

    def __init__(self, config: StaMoConfig, load_transformer_weights: bool = True):
        super().__init__()
        self.config = config
        self.encoder = StaMoEncoder(config)
        self.decoder = StaMoDecoder(config, load_transformer_weights)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Compressor, DiT and conditioning projections; DINOv2 and the VAE never train."""
        return [p for p in self.parameters() if p.requires_grad]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, N, D) float32."""
        return self.encoder(images)

    def decode(
        self, states: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, N, D) -> (B, 3, S, S) float32 in [0, 1] (S = config.image_size).

        Args:
            states: states (B, N, D).
            steps: Euler steps (None: decoder.flow.sample_steps).
            generator: fixes the sampling noise (None: the global generator).
        """
        expected = (self.config.num_state_tokens, self.config.state_dim)
        if states.ndim != 3 or tuple(states.shape[1:]) != expected:
            raise ValueError(
                f"states must have shape (B, {expected[0]}, {expected[1]}); got {tuple(states.shape)}"
            )
        return self.decoder.sample(states.float(), steps=steps, generator=generator)

    def loss(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss of reconstructing `images` from their own states.

        Args:
            images: (B, 3, H, W) float in [0, 1].
            generator: fixes the noise and sigmas (for reproducible evaluation).
        """
        check_pixels(images)
        latents = self.decoder.images_to_latents(resize(images, self.config.image_size))
        states = self.encoder(images)
        loss, metrics = self.decoder.loss(latents, states, generator)
        metrics["state_abs_mean"] = states.detach().abs().mean().item()
        return loss, metrics

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(images, generator)

    # ---- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` (``encoder.*`` and ``decoder.*``).

        Frozen parts loaded from a pretrained path (DINOv2, VAE) are stored as their path only.
        """
        os.makedirs(directory, exist_ok=True)
        self.config.save(directory)
        state = {ENCODER_PREFIX + k: v for k, v in self.encoder.weights_to_save().items()}
        state.update({DECODER_PREFIX + k: v for k, v in self.decoder.weights_to_save().items()})
        save_state(state, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> StaMoAutoencoder:
        """Load a directory written by `save_pretrained` (in eval mode; training code calls ``train()``)."""
        config = StaMoConfig.load(directory)
        state = load_state(directory)
        if not any(k.startswith(DECODER_PREFIX) for k in state):
            raise ValueError(
                f"'{directory}' holds a StaMo encoder only (no decoder.* weights); "
                "load it with StaMoEncoder.from_pretrained."
            )
        model = cls(config, load_transformer_weights=False)
        load_strict(
            model.encoder, select(state, ENCODER_PREFIX), set(model.encoder.weights_to_save()), str(directory)
        )
        load_strict(
            model.decoder, select(state, DECODER_PREFIX), set(model.decoder.weights_to_save()), str(directory)
        )
        return model.eval()
