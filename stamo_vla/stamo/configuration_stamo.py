"""StaMo model configuration: frozen DINOv2 + compressor (encoder), SD3-style DiT + VAE (decoder).

The config is a draccus dataclass, so the pretraining recipe embeds it directly (YAML presets set its
fields) and `save_pretrained` writes exactly the config that ran to ``config.json``.

Pretrained parts come from local paths (no download on our machines): ``backbone.pretrained_path`` (a
transformers ``Dinov2Model`` directory, e.g. facebook/dinov2-large), ``decoder.transformer.pretrained_path``
and ``decoder.vae.pretrained_path`` (diffusers model directories, e.g. ``<sd3-medium>/transformer`` and
``<sd3-medium>/vae``). When a path is set, the architecture fields next to it are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_choice, check_range
from stamo_vla.fileio import read_json, write_json_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")
SIGMA_SAMPLINGS = ("logit_normal", "uniform")
# Fixed position features added to the DINOv2 tokens the compressor reads: none | sincos_2d.
POSITION_FEATURES = ("none", "sincos_2d")
# Last layer of the encoder, applied to the state tokens: none | batch_norm (parameter-free standardization).
STATE_BOTTLENECKS = ("none", "batch_norm")


def _positive(name: str, value: int | float) -> None:
    check_range(name, value, low=0, low_open=True)  # finite too: NaN or inf never passes


def _divides(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if value % divisor:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


@dataclass
class BackboneConfig:
    """The frozen DINOv2 feature extractor (transformers ``Dinov2Model``)."""

    # Local directory (or hub id, when online) of a pretrained Dinov2Model. When set, only this path is
    # stored with StaMo checkpoints, never the weights. None: random init from the fields below (tests).
    pretrained_path: str | None = None
    # Width of the random-init DINOv2 (1024 for ViT-L).
    hidden_size: int = 1024
    # Number of transformer layers of the random-init DINOv2.
    num_hidden_layers: int = 24
    # Attention heads of the random-init DINOv2.
    num_attention_heads: int = 16
    # MLP expansion ratio of the random-init DINOv2.
    mlp_ratio: int = 4
    # Patch size of the random-init DINOv2 (14 for the released models).
    patch_size: int = 14
    # Resolution images are resized to before DINOv2 (a multiple of the patch size).
    image_size: int = 224
    # Storage dtype of the frozen weights: float32 | bfloat16 | float16 (bfloat16 halves memory on GPU).
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_choice("backbone.dtype", self.dtype, DTYPES)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size"):
            _positive(f"backbone.{name}", getattr(self, name))
        _divides(
            "backbone.hidden_size", self.hidden_size, "backbone.num_attention_heads", self.num_attention_heads
        )
        _divides("backbone.image_size", self.image_size, "backbone.patch_size", self.patch_size)


@dataclass
class CompressorConfig:
    """Learned query tokens that cross-attend to the DINOv2 features (trainable)."""

    # Number of compressor blocks (each: query self-attention, cross-attention to features, MLP).
    num_layers: int = 4
    # Width of the compressor; DINOv2 features are projected to it.
    hidden_size: int = 1024
    # Attention heads per block.
    num_heads: int = 16
    # MLP expansion ratio per block.
    mlp_ratio: int = 4
    # Fixed (not learned) position features added to the projected DINOv2 patch tokens: none (the paper:
    # DINOv2's own position embeddings only) | sincos_2d (2-D sine-cosine of each patch's grid position;
    # helps a random-init or briefly trained DINOv2 whose own position signal is weak).
    position_features: str = "none"

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "mlp_ratio"):
            _positive(f"compressor.{name}", getattr(self, name))
        check_choice("compressor.position_features", self.position_features, POSITION_FEATURES)
        _divides("compressor.hidden_size", self.hidden_size, "compressor.num_heads", self.num_heads)


@dataclass
class TransformerConfig:
    """The DiT decoder: a diffusers ``SD3Transformer2DModel`` (MMDiT with joint attention)."""

    # Local diffusers directory of a pretrained SD3 transformer (e.g. <sd3-medium>/transformer); it is
    # fine-tuned, so its weights are always saved. None: random init from the fields below.
    pretrained_path: str | None = None
    # Latent-grid size the position embedding is built for (image_size / VAE downsampling).
    sample_size: int = 32
    # Patch size on the latent grid.
    patch_size: int = 2
    # Number of DiT blocks.
    num_layers: int = 24
    # Width per attention head.
    attention_head_dim: int = 64
    # Attention heads (model width = heads x head dim).
    num_attention_heads: int = 24
    # Width of the joint-attention context; state tokens are projected to it.
    joint_attention_dim: int = 4096
    # Width the context is projected to inside the DiT.
    caption_projection_dim: int = 1536
    # Width of the pooled conditioning vector; the flattened state is projected to it.
    pooled_projection_dim: int = 2048
    # Largest latent grid (in patches) the position embedding supports.
    pos_embed_max_size: int = 192
    # Query/key normalization inside attention: None or "rms_norm" (SD3.5).
    qk_norm: str | None = None
    # Recompute activations in the backward pass (saves GPU memory at paper scale, ~30% slower).
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("sample_size", "patch_size", "num_layers", "attention_head_dim", "num_attention_heads"):
            _positive(f"decoder.transformer.{name}", getattr(self, name))
        for name in (
            "joint_attention_dim",
            "caption_projection_dim",
            "pooled_projection_dim",
            "pos_embed_max_size",
        ):
            _positive(f"decoder.transformer.{name}", getattr(self, name))
        check_choice("decoder.transformer.qk_norm", self.qk_norm, [None, "rms_norm", "layer_norm"])


@dataclass
class VAEConfig:
    """The frozen diffusers ``AutoencoderKL`` whose latent space the DiT works in."""

    # Local diffusers directory of a pretrained VAE (e.g. <sd3-medium>/vae); only the path is stored.
    # None: random init from the fields below (fit it with `stamo_vla.training.vae_fit` before use).
    pretrained_path: str | None = None
    # Channels per encoder/decoder level; each level after the first halves the resolution.
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    # ResNet blocks per level.
    layers_per_block: int = 2
    # Latent channels (16 for SD3's VAE).
    latent_channels: int = 16
    # GroupNorm groups (must divide every entry of block_out_channels).
    norm_num_groups: int = 32
    # Self-attention in the VAE's middle block (SD3's VAE has it; tiny CPU presets drop it).
    mid_block_attention: bool = True
    # z = (latent - shift_factor) * scaling_factor. None: take the VAE's own config value.
    scaling_factor: float | None = None
    # See scaling_factor. None: the VAE's own value (0 when it has none).
    shift_factor: float | None = None
    # Storage dtype of the frozen VAE: float32 | bfloat16 | float16.
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_choice("decoder.vae.dtype", self.dtype, DTYPES)
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not self.block_out_channels:
            raise ValueError("decoder.vae.block_out_channels=() is not valid; give at least one level")
        for c in self.block_out_channels:
            _divides(
                "decoder.vae.block_out_channels entry", c, "decoder.vae.norm_num_groups", self.norm_num_groups
            )
        _positive("decoder.vae.latent_channels", self.latent_channels)
        if self.scaling_factor is not None:
            _positive("decoder.vae.scaling_factor", self.scaling_factor)


@dataclass
class FlowMatchingConfig:
    """Rectified-flow training and Euler sampling (z_t = (1 - sigma) z0 + sigma * eps, target eps - z0)."""

    # How training sigmas are drawn: logit_normal (SD3's choice) | uniform.
    sigma_sampling: str = "logit_normal"
    # Mean of the normal before the sigmoid (logit_normal only).
    logit_mean: float = 0.0
    # Std of the normal before the sigmoid (logit_normal only).
    logit_std: float = 1.0
    # Timestep scale given to the DiT: timestep = sigma * num_train_timesteps (as in SD3).
    num_train_timesteps: int = 1000
    # Sigma shift of the Euler sampler (FlowMatchEulerDiscreteScheduler.shift; SD3 uses 3.0).
    sampling_shift: float = 3.0
    # Default number of Euler steps for `decode` / `sample`.
    sample_steps: int = 28

    def __post_init__(self) -> None:
        check_choice("decoder.flow.sigma_sampling", self.sigma_sampling, SIGMA_SAMPLINGS)
        check_range("decoder.flow.logit_mean", self.logit_mean)
        _positive("decoder.flow.logit_std", self.logit_std)
        _positive("decoder.flow.num_train_timesteps", self.num_train_timesteps)
        _positive("decoder.flow.sampling_shift", self.sampling_shift)
        _positive("decoder.flow.sample_steps", self.sample_steps)


@dataclass
class DecoderConfig:
    """DiT decoder conditioned on the state tokens, in a frozen VAE's latent space."""

    # The SD3 transformer (trainable).
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # The VAE (frozen).
    vae: VAEConfig = field(default_factory=VAEConfig)
    # Flow-matching loss and sampler settings.
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)


@dataclass
class StaMoConfig:
    """Everything that defines a StaMo state model (encoder + decoder)."""

    # Frozen DINOv2.
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Trainable transformer compressor.
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    # N: number of state tokens (the paper uses 2).
    num_state_tokens: int = 2
    # D: width of each state token (the paper uses 1024).
    state_dim: int = 1024
    # Last layer of the encoder, on the (B, N, D) state tokens: none (the paper) | batch_norm (parameter-free
    # batch standardization of every state feature, running statistics at eval; it keeps the states from
    # shrinking to a constant while the decoder first learns the average image). Part of the encoder: saved,
    # loaded and applied with it, so targets, caches and latent motion all see the same tokens.
    state_bottleneck: str = "none"
    # Momentum of the batch_norm bottleneck's running statistics (the eval-time standardization).
    state_bottleneck_momentum: float = 0.01
    # Resolution of the autoencoder's images (VAE input and decoded output); the paper uses 256.
    image_size: int = 256
    # The DiT decoder.
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        _positive("num_state_tokens", self.num_state_tokens)
        _positive("state_dim", self.state_dim)
        _positive("image_size", self.image_size)
        check_choice("state_bottleneck", self.state_bottleneck, STATE_BOTTLENECKS)
        if not 0 < self.state_bottleneck_momentum <= 1:
            raise ValueError(
                f"state_bottleneck_momentum={self.state_bottleneck_momentum!r} is not valid; it must be in (0, 1]"
            )

    # ---- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        import draccus

        return draccus.encode(self)

    @classmethod
    def from_dict(cls, data: dict) -> StaMoConfig:
        """Build a config from `to_dict` output; unknown or malformed fields raise ValueError."""
        import draccus

        data = {k: v for k, v in data.items() if not k.startswith("_")}
        try:
            return draccus.decode(cls, data)
        except ValueError:
            raise
        except Exception as err:  # draccus raises its own ParsingError / TypeError subclasses
            raise ValueError(f"StaMo config is not valid: {err}") from err

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` into `directory` (atomically)."""
        write_json_atomic(Path(directory) / CONFIG_NAME, {"_stamo_format": FORMAT_VERSION, **self.to_dict()})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> StaMoConfig:
        """Read ``config.json`` from a directory written by `save` / ``save_pretrained``."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No StaMo {CONFIG_NAME} in '{directory}'. Pass a directory written by "
                "StaMoAutoencoder.save_pretrained or StaMoEncoder.save_pretrained."
            )
        data = read_json(path, "Copy the checkpoint again from where it was written.")
        version = data.get("_stamo_format") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"'{path}' has _stamo_format={version!r}; this version of stamo_vla reads format {FORMAT_VERSION}. "
                "Is it a StaMo checkpoint?"
            )
        return cls.from_dict(data)


def tiny_config() -> StaMoConfig:
    """A random-init model that trains on a 2-core CPU in seconds (64 px, 2 x 64 state)."""
    return StaMoConfig(
        backbone=BackboneConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_ratio=2,
            patch_size=8,
            image_size=64,
        ),
        compressor=CompressorConfig(num_layers=1, hidden_size=64, num_heads=4, mlp_ratio=2),
        num_state_tokens=2,
        state_dim=64,
        image_size=64,
        decoder=DecoderConfig(
            transformer=TransformerConfig(
                sample_size=16,
                patch_size=2,
                num_layers=2,
                attention_head_dim=16,
                num_attention_heads=4,
                joint_attention_dim=64,
                caption_projection_dim=64,
                pooled_projection_dim=64,
                pos_embed_max_size=16,
            ),
            vae=VAEConfig(
                block_out_channels=(8, 16, 16),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=4,
                mid_block_attention=False,
            ),
            flow=FlowMatchingConfig(sampling_shift=1.0, sample_steps=10),
        ),
    )


def mid_config() -> StaMoConfig:
    """A mid-size random-init model for benchmarks: ViT-S/14-sized DINOv2, 2 x 256 state, 128 px, 4-layer DiT."""
    return StaMoConfig(
        backbone=BackboneConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224),
        compressor=CompressorConfig(num_layers=2, hidden_size=384, num_heads=6, mlp_ratio=4),
        num_state_tokens=2,
        state_dim=256,
        image_size=128,
        decoder=DecoderConfig(
            transformer=TransformerConfig(
                sample_size=32,
                patch_size=2,
                num_layers=4,
                attention_head_dim=64,
                num_attention_heads=6,
                joint_attention_dim=384,
                caption_projection_dim=384,
                pooled_projection_dim=384,
                pos_embed_max_size=32,
            ),
            vae=VAEConfig(
                block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16
            ),
            flow=FlowMatchingConfig(sampling_shift=1.0, sample_steps=20),
        ),
    )


def paper_config(
    dinov2_path: str = "facebook/dinov2-large",
    sd3_path: str = "stabilityai/stable-diffusion-3-medium-diffusers",
) -> StaMoConfig:
    """The paper's setting: frozen DINOv2-L, 2 x 1024 state, SD3-medium transformer + VAE, 256 px.

    The weights must be available locally (pass local directories); the code path is the same as tiny's.
    """
    return StaMoConfig(
        backbone=BackboneConfig(pretrained_path=dinov2_path, image_size=224, dtype="bfloat16"),
        compressor=CompressorConfig(num_layers=4, hidden_size=1024, num_heads=16, mlp_ratio=4),
        num_state_tokens=2,
        state_dim=1024,
        image_size=256,
        decoder=DecoderConfig(
            transformer=TransformerConfig(pretrained_path=f"{sd3_path}/transformer"),
            vae=VAEConfig(pretrained_path=f"{sd3_path}/vae", dtype="bfloat16"),
            flow=FlowMatchingConfig(sigma_sampling="logit_normal", sampling_shift=3.0, sample_steps=28),
        ),
    )
