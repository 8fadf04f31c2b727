"""StaMo decoder: a diffusers SD3 transformer conditioned on the state tokens, in a frozen VAE's latent space.

The N state tokens replace SD3's text stream: each is projected to the joint-attention context
(``encoder_hidden_states``, (B, N, joint_attention_dim)) and the flattened state to the pooled vector
(``pooled_projections``, (B, pooled_projection_dim)). diffusers is imported only here, when a decoder is built.

Shapes (C = VAE latent channels, f = VAE downsampling, S = config.image_size):
    pixels   (B, 3, S, S) float in [0, 1]
    latents  (B, C, S / f, S / f) float32, scaled: (vae latent - shift_factor) * scaling_factor
    states   (B, N, D) float
"""

from __future__ import annotations

import torch
from torch import nn

from stamo_vla.stamo import flow_matching as fm
from stamo_vla.stamo.configuration_stamo import StaMoConfig, TransformerConfig, VAEConfig
from stamo_vla.stamo.modeling_encoder import freeze
from stamo_vla.stamo.weights import DTYPES


def build_vae(cfg: VAEConfig, image_size: int) -> nn.Module:
    """A frozen diffusers ``AutoencoderKL``: pretrained from `cfg.pretrained_path` or random init."""
    from diffusers import AutoencoderKL

    if cfg.pretrained_path is None:
        n = len(cfg.block_out_channels)
        vae = AutoencoderKL(
            block_out_channels=cfg.block_out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups,
            mid_block_add_attention=cfg.mid_block_attention,
            sample_size=image_size,
        )
    else:
        try:
            vae = AutoencoderKL.from_pretrained(cfg.pretrained_path)
        except OSError as err:
            raise FileNotFoundError(
                f"Could not load the VAE from decoder.vae.pretrained_path='{cfg.pretrained_path}': {err}. "
                "Pass a local diffusers AutoencoderKL directory (e.g. <stable-diffusion-3-medium>/vae)."
            ) from err
    if DTYPES[cfg.dtype] != torch.float32:
        vae = vae.to(DTYPES[cfg.dtype])
    return freeze(vae)


def build_transformer(cfg: TransformerConfig, latent_channels: int, load_weights: bool = True) -> nn.Module:
    """A diffusers ``SD3Transformer2DModel``; `load_weights=False` builds a pretrained path's architecture only.

    Args:
        cfg: the transformer configuration.
        latent_channels: the VAE's latent channels (the transformer's input and output channels).
        load_weights: load a pretrained path's weights (False: its architecture only).
    """
    from diffusers import SD3Transformer2DModel

    if cfg.pretrained_path is None:
        model = SD3Transformer2DModel(
            sample_size=cfg.sample_size,
            patch_size=cfg.patch_size,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_layers=cfg.num_layers,
            attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads,
            joint_attention_dim=cfg.joint_attention_dim,
            caption_projection_dim=cfg.caption_projection_dim,
            pooled_projection_dim=cfg.pooled_projection_dim,
            pos_embed_max_size=cfg.pos_embed_max_size,
            qk_norm=cfg.qk_norm,
        )
    else:
        try:
            if load_weights:
                model = SD3Transformer2DModel.from_pretrained(cfg.pretrained_path)
            else:
                model = SD3Transformer2DModel.from_config(
                    SD3Transformer2DModel.load_config(cfg.pretrained_path)
                )
        except OSError as err:
            raise FileNotFoundError(
                f"Could not load the SD3 transformer from decoder.transformer.pretrained_path='{cfg.pretrained_path}': "
                f"{err}. Pass a local diffusers directory (e.g. <stable-diffusion-3-medium>/transformer)."
            ) from err
    if model.config.in_channels != latent_channels:
        raise ValueError(
            f"decoder.transformer has in_channels={model.config.in_channels} but the VAE has "
            f"{latent_channels} latent channels; use a transformer and VAE from the same model family."
        )
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


class StaMoDecoder(nn.Module):
    """State tokens -> image, trained with the flow-matching velocity loss.

    Args:
        config: the full StaMo config.
        load_transformer_weights: load a pretrained transformer's weights from its path (False when the
            weights come from a StaMo checkpoint right after).
    """

    def __init__(self, config: StaMoConfig, load_transformer_weights: bool = True):
        super().__init__()
        self.config = config
        dcfg = config.decoder
        self.vae = build_vae(dcfg.vae, config.image_size)
        latent_channels = self.vae.config.latent_channels
        self.transformer = build_transformer(dcfg.transformer, latent_channels, load_transformer_weights)
        tcfg = self.transformer.config
        self._check_grid(tcfg)
        n, d = config.num_state_tokens, config.state_dim
        self.context_proj = nn.Linear(d, tcfg.joint_attention_dim)
        # Token-index embedding: SD3's context stream has no positions of its own.
        self.context_pos = nn.Parameter(torch.zeros(1, n, tcfg.joint_attention_dim))
        self.pooled_proj = nn.Sequential(nn.LayerNorm(n * d), nn.Linear(n * d, tcfg.pooled_projection_dim))
        self.set_latent_scale(dcfg.vae.scaling_factor, dcfg.vae.shift_factor)

    def set_latent_scale(self, scaling_factor: float | None, shift_factor: float | None) -> None:
        """Set z = (latent - shift) * scaling (None: the VAE's own values) and record it in the config."""
        vae_cfg = self.vae.config
        self.scaling_factor = float(scaling_factor or vae_cfg.scaling_factor)
        self.shift_factor = float(shift_factor if shift_factor is not None else vae_cfg.shift_factor or 0.0)
        self.config.decoder.vae.scaling_factor = scaling_factor
        self.config.decoder.vae.shift_factor = shift_factor

    def _check_grid(self, tcfg) -> None:
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        latent = self.config.image_size // down
        if self.config.image_size % down or latent % tcfg.patch_size:
            raise ValueError(
                f"image_size={self.config.image_size} gives a {latent}-pixel latent grid (VAE downsampling {down}) "
                f"that the transformer's patch_size={tcfg.patch_size} does not divide; pick an image_size "
                f"divisible by {down * tcfg.patch_size}."
            )
        if latent // tcfg.patch_size > tcfg.pos_embed_max_size:
            raise ValueError(
                f"image_size={self.config.image_size} needs {latent // tcfg.patch_size} patches per side but "
                f"decoder.transformer.pos_embed_max_size={tcfg.pos_embed_max_size}; raise it or lower image_size."
            )

    def train(self, mode: bool = True) -> StaMoDecoder:
        super().train(mode)
        self.vae.eval()
        return self

    # ---- latent space --------------------------------------------------------------------------------
    @torch.no_grad()
    def images_to_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) [0, 1] -> scaled latents (B, C, S/f, S/f) float32 (the posterior mean: deterministic)."""
        x = (pixels * 2 - 1).to(self.vae.dtype)
        latents = self.vae.encode(x).latent_dist.mean.float()
        return (latents - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, 3, S, S) float32 in [0, 1]."""
        z = latents.float() / self.scaling_factor + self.shift_factor
        x = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    # ---- model ---------------------------------------------------------------------------------------
    def velocity(self, latents: torch.Tensor, sigmas: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Predicted velocity (B, C, h, w) at noise levels `sigmas` (B,), conditioned on `states` (B, N, D).

        Args:
            latents: noisy scaled latents (B, C, h, w).
            sigmas: their noise levels (B,).
            states: the conditioning states (B, N, D).
        """
        context = self.context_proj(states) + self.context_pos
        pooled = self.pooled_proj(states.flatten(1))
        timestep = sigmas * self.config.decoder.flow.num_train_timesteps
        return self.transformer(
            hidden_states=latents,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )[0]

    def loss(
        self, latents: torch.Tensor, states: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching velocity MSE on clean scaled latents; `generator` fixes noise and sigmas.

        Args:
            latents: clean scaled latents (B, C, h, w).
            states: the conditioning states (B, N, D).
            generator: fixes noise and sigmas (None: the global generator).
        """
        cfg = self.config.decoder.flow
        sigmas = fm.sample_sigmas(latents.shape[0], cfg, latents.device, generator)
        noise = fm.sample_noise(latents, generator)
        z_t = fm.interpolate_noise(latents, noise, sigmas)
        pred = self.velocity(z_t, sigmas, states).float()
        loss = torch.mean((pred - fm.velocity_target(latents, noise)) ** 2)
        return loss, {"loss_flow": loss.item(), "sigma_mean": sigmas.mean().item()}

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        """(B, C, h, w) of the scaled latents of `batch` images."""
        size = self.config.image_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (batch, self.vae.config.latent_channels, size, size)

    @torch.no_grad()
    def sample_latents(
        self,
        states: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Integrate the flow from noise (sigma = 1) to scaled latents (B, C, h, w), with diffusers' Euler scheduler.

        Args:
            noise: the starting latents (B, C, h, w); default: drawn from `generator`. Passing one noise
                for all rows makes rows differ only by their states (interpolation strips).
        """
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = self.config.decoder.flow
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=cfg.num_train_timesteps, shift=cfg.sampling_shift
        )
        scheduler.set_timesteps(steps or cfg.sample_steps, device=states.device)
        shape = self.latent_shape(states.shape[0])
        if noise is None:
            latents = fm.sample_noise(torch.empty(shape, device=states.device), generator)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}; got {tuple(noise.shape)}")
        else:
            latents = noise.to(states.device, torch.float32)
        for t in scheduler.timesteps:
            sigmas = (t / cfg.num_train_timesteps).expand(shape[0]).to(states.device)
            v = self.velocity(latents, sigmas, states).float()
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
        return latents

    def sample(
        self, states: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode states (B, N, D) to images (B, 3, S, S) float32 in [0, 1].

        Args:
            states: states (B, N, D).
            steps: Euler steps (None: flow.sample_steps).
            generator: fixes the initial noise (None: the global generator).
        """
        return self.latents_to_images(self.sample_latents(states, steps, generator))

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """State dict without the VAE when it comes from a pretrained path (only the path is stored)."""
        state = self.state_dict()
        if self.config.decoder.vae.pretrained_path is not None:
            state = {k: v for k, v in state.items() if not k.startswith("vae.")}
        return state
