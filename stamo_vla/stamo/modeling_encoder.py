"""StaMo encoder: frozen DINOv2 patch features -> transformer compressor -> (B, N, D) state tokens.

Shapes (N = config.num_state_tokens, D = config.state_dim):
    pixels   (B, 3, H, W) float in [0, 1]        any H, W: resized to backbone.image_size internally
    features (B, 1 + P, F) float32               DINOv2 last hidden state (CLS + P patch tokens)
    states   (B, N, D) float32
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from stamo_vla.stamo.configuration_stamo import BackboneConfig, CompressorConfig, StaMoConfig
from stamo_vla.stamo.pixels import check_pixels, imagenet_normalize, resize
from stamo_vla.stamo.weights import DTYPES, load_state, load_strict, save_state, select

ENCODER_PREFIX = "encoder."


def freeze(module: nn.Module) -> nn.Module:
    """Frozen in every sense: eval mode and no gradients (the owner keeps it in eval, see `train`)."""
    module.eval()
    module.requires_grad_(False)
    return module


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """A frozen transformers ``Dinov2Model``: pretrained from `cfg.pretrained_path` or random init."""
    from transformers import Dinov2Config, Dinov2Model

    dtype = DTYPES[cfg.dtype]
    if cfg.pretrained_path is None:
        config = Dinov2Config(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            mlp_ratio=cfg.mlp_ratio,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
        )
        model = Dinov2Model(config).to(dtype)
    else:
        try:
            model = Dinov2Model.from_pretrained(cfg.pretrained_path, dtype=dtype)
        except OSError as err:
            raise FileNotFoundError(
                f"Could not load DINOv2 from backbone.pretrained_path='{cfg.pretrained_path}': {err}. "
                "Download it once (e.g. facebook/dinov2-large) and pass its local directory."
            ) from err
    return freeze(model)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q = self.q(x).view(b, n, self.heads, w // self.heads).transpose(1, 2)
        k, v = (
            self.kv(context).view(b, context.shape[1], 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class CompressorBlock(nn.Module):
    """Pre-norm block: queries attend to each other, then to the image features, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads)
        self.norm_query = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width * mlp_ratio), nn.GELU(), nn.Linear(width * mlp_ratio, width)
        )

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(queries)
        queries = queries + self.self_attn(h, h)
        queries = queries + self.cross_attn(self.norm_query(queries), self.norm_context(features))
        return queries + self.mlp(self.norm_mlp(queries))


class Compressor(nn.Module):
    """N learned query tokens that read the DINOv2 features: (B, 1 + P, F) -> (B, N, D)."""

    def __init__(self, feature_dim: int, cfg: CompressorConfig, num_tokens: int, state_dim: int):
        super().__init__()
        width = cfg.hidden_size
        self.in_proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.queries = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(
            CompressorBlock(width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, state_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        context = self.in_proj(features)
        x = self.queries.expand(features.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, context)
        return self.out_proj(self.norm(x))


class StaMoEncoder(nn.Module):
    """Image -> compact state. DINOv2 stays frozen (eval mode, no grads) even inside ``train()``.

    Args:
        config: the full StaMo config (the decoder part is carried along, not built).
    """

    def __init__(self, config: StaMoConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        feature_dim = self.backbone.config.hidden_size
        self.compressor = Compressor(
            feature_dim, config.compressor, config.num_state_tokens, config.state_dim
        )

    def train(self, mode: bool = True) -> StaMoEncoder:
        super().train(mode)
        self.backbone.eval()  # frozen means frozen: no dropout / drop-path, whatever the caller's mode
        return self

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """DINOv2 last hidden state (B, 1 + P, F) float32 of validated [0, 1] pixels."""
        x = imagenet_normalize(resize(pixels, self.config.backbone.image_size))
        dtype = next(self.backbone.parameters()).dtype
        return self.backbone(pixel_values=x.to(dtype)).last_hidden_state.float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, N, D) float32 state tokens (differentiable in the compressor)."""
        check_pixels(pixels, "pixels")
        return self.compressor(self.features(pixels)).float()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Alias of `forward`; wrap in ``torch.no_grad()`` when only targets are needed."""
        return self(pixels)

    # ---- persistence ---------------------------------------------------------------------------------
    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """State dict without the backbone when it comes from a pretrained path (only the path is stored)."""
        state = self.state_dict()
        if self.config.backbone.pretrained_path is not None:
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` (keys prefixed ``encoder.``)."""
        os.makedirs(directory, exist_ok=True)
        self.config.save(directory)
        save_state({ENCODER_PREFIX + k: v for k, v in self.weights_to_save().items()}, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> StaMoEncoder:
        """Load an encoder from an encoder or autoencoder directory (the decoder is not built)."""
        config = StaMoConfig.load(directory)
        encoder = cls(config)
        state = select(load_state(directory), ENCODER_PREFIX)
        load_strict(encoder, state, set(encoder.weights_to_save()), str(directory))
        return encoder


def fingerprint(encoder: StaMoEncoder) -> str:
    """sha256 over the encoder's config and all its weights (backbone included).

    The backbone's ``pretrained_path`` is left out of the hashed config: the weights themselves are hashed,
    so moving a DINOv2 directory does not invalidate caches keyed by this fingerprint.
    """
    cfg = encoder.config.to_dict()
    cfg.pop("decoder", None)
    cfg["backbone"] = {k: v for k, v in cfg["backbone"].items() if k != "pretrained_path"}
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
