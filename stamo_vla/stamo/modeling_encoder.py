"""StaMo encoder: frozen DINOv2 patch features -> transformer compressor -> (B, N, D) state tokens.

Shapes (N = config.num_state_tokens, D = config.state_dim):
    pixels   (B, 3, H, W) float in [0, 1]        any H, W: resized to backbone.image_size internally
    features (B, 1 + P, F) float32               DINOv2 last hidden state (CLS + P patch tokens)
    states   (B, N, D) float32                   compressor output after the state bottleneck

The state bottleneck (``config.state_bottleneck``) is the encoder's last layer, so every consumer of the
encoder (the VLA head's targets, the target cache, latent motion, the probe) sees the same tokens.
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


def sincos_2d(num_tokens: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position features (1, num_tokens, width) of a CLS token (zeros) + a square patch grid."""
    side = round((num_tokens - 1) ** 0.5)
    if side * side != num_tokens - 1:
        raise ValueError(
            f"compressor.position_features='sincos_2d' needs CLS + a square patch grid; got {num_tokens} tokens"
        )
    quarter = width // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    coords = torch.arange(side, dtype=torch.float32)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for grid in (gy.reshape(-1), gx.reshape(-1)):
        angles = grid[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    pos = torch.cat(parts, dim=1)
    pos = F.pad(pos, (0, width - pos.shape[1]))  # widths not divisible by 4: zero tail
    return torch.cat([torch.zeros(1, width), pos]).unsqueeze(0)


class StateBottleneck(nn.Module):
    """The encoder's last layer on the (B, N, D) tokens: identity, or parameter-free batch standardization.

    ``batch_norm`` standardizes each of the N*D state features with batch statistics while the encoder
    trains and with running statistics (buffers, saved with the encoder) otherwise. Without it the tiny
    model's states shrink toward a constant while the decoder learns the average image (issue 12).
    """

    def __init__(self, kind: str, num_tokens: int, state_dim: int, momentum: float = 0.01):
        super().__init__()
        self.kind = kind
        self.norm = (
            nn.BatchNorm1d(num_tokens * state_dim, affine=False, momentum=momentum)
            if kind == "batch_norm"
            else None
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return tokens
        if self.norm.training and tokens.shape[0] < 2:
            raise ValueError(
                "state_bottleneck='batch_norm' trains on batch statistics and needs at least 2 images per "
                f"batch; got {tokens.shape[0]}. Put the encoder in eval mode to encode single images."
            )
        return self.norm(tokens.flatten(1)).view_as(tokens)


class Compressor(nn.Module):
    """N learned query tokens that read the DINOv2 features: (B, 1 + P, F) -> (B, N, D)."""

    def __init__(self, feature_dim: int, cfg: CompressorConfig, num_tokens: int, state_dim: int):
        super().__init__()
        width = cfg.hidden_size
        self.position_features = cfg.position_features
        self._pos_cache: torch.Tensor | None = None
        self.in_proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width))
        self.queries = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(
            CompressorBlock(width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, state_dim)

    def _positions(self, num_tokens: int, width: int, device: torch.device) -> torch.Tensor:
        cache = self._pos_cache
        if cache is None or cache.shape[1] != num_tokens or cache.device != device:
            cache = self._pos_cache = sincos_2d(num_tokens, width).to(device)
        return cache

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        context = self.in_proj(features)
        if self.position_features == "sincos_2d":
            context = context + self._positions(context.shape[1], context.shape[2], context.device)
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
        self.bottleneck = StateBottleneck(
            config.state_bottleneck,
            config.num_state_tokens,
            config.state_dim,
            config.state_bottleneck_momentum,
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
        return self.tokens_from_features(self.features(pixels))

    def tokens_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """DINOv2 features (B, 1 + P, F) -> state tokens (B, N, D): compressor, then the bottleneck."""
        return self.bottleneck(self.compressor(features).float())

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Alias of `forward`; wrap in ``torch.no_grad()`` when only targets are needed."""
        return self(pixels)

    @torch.no_grad()
    def recalibrate_bottleneck(self, pixels: torch.Tensor, batch_size: int = 64) -> None:
        """Set the batch_norm bottleneck's running statistics to the exact statistics of `pixels`' tokens.

        While the compressor trains, exponential running averages lag behind it, so eval-time tokens would be
        standardized with stale statistics the decoder never saw. Pretraining calls this on its training
        images before every evaluation and checkpoint ("precise BN"). No-op without a batch_norm bottleneck.
        """
        norm = self.bottleneck.norm
        if norm is None:
            return
        device = next(self.compressor.parameters()).device
        raw = torch.cat(
            [
                self.compressor(self.features(pixels[i : i + batch_size].to(device))).float().flatten(1)
                for i in range(0, len(pixels), batch_size)
            ]
        )
        if len(raw) < 2:
            raise ValueError(f"recalibrate_bottleneck needs at least 2 images; got {len(raw)}")
        norm.running_mean.copy_(raw.mean(0))
        norm.running_var.copy_(raw.var(0))

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
        """Load an encoder from an encoder or autoencoder directory (the decoder is not built).

        Returned in eval mode: a loaded encoder supplies targets, and its state bottleneck must apply the saved
        running statistics, never the statistics of whatever batch it is given.
        """
        config = StaMoConfig.load(directory)
        encoder = cls(config)
        state = select(load_state(directory), ENCODER_PREFIX)
        load_strict(encoder, state, set(encoder.weights_to_save()), str(directory))
        return encoder.eval()


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
