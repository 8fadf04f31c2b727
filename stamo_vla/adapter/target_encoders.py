"""The frozen per-frame encoders that auxiliary targets are made of (`stamo_vla.adapter.targets`).

Every encoder maps (B, 3, H, W) float pixels in [0, 1] to (B, N, D) float32 and describes itself with
``target_manifest()`` (kind, fingerprint, N, D and what made it), which the target cache records and fine-tuning
checks, so a cache of one target is never read as another.

    stamo              the trained `StaMoEncoder` as it is (targets state and motion)
    untrained_stamo    `UntrainedStaMoEncoder`: the same frozen DINOv2, a compressor of the same shape with random
                       weights drawn from a seed, the same bottleneck kind (target untrained)
    backbone_features  `FeatureTargetEncoder`: the policy's own frozen vision backbone, patch features pooled to a
                       small grid (target features)
"""

from __future__ import annotations

import copy
import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn

from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.stamo.modeling_encoder import Compressor, StateBottleneck, fingerprint
from stamo_vla.stamo.pixels import check_pixels, resize


def _digest(facts: dict, module: nn.Module, dtype: torch.dtype | None = None) -> str:
    """sha256 over `facts` and every tensor of `module` (names, dtypes, shapes, bytes; floating tensors cast to
    `dtype` first when given)."""
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class UntrainedStaMoEncoder(nn.Module):
    """The StaMo encoder architecture with a random compressor: the "is any compact target enough?" control.

    It reads the trained encoder's frozen DINOv2 features (DINOv2 is not trained by StaMo), and replaces what
    StaMo trains, the compressor, by one of the same shape whose weights are drawn from `seed` alone (the global
    torch RNG is neither read nor advanced). The bottleneck is of the same kind with fresh running statistics
    (mean 0, var 1): the per-dimension standardization over the data that a calibrated ``batch_norm`` bottleneck
    applies is the target standardization every target gets (``adapter.target_norm='dataset'``).

    Args:
        trained: the trained StaMo encoder whose backbone and shapes are used (kept frozen).
        seed: seed of the compressor weights.
    """

    def __init__(self, trained: nn.Module, seed: int):
        super().__init__()
        cfg = trained.config
        self.config, self.seed = cfg, int(seed)
        self.trained = trained.eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            compressor = Compressor(
                trained.backbone.config.hidden_size, cfg.compressor, cfg.num_state_tokens, cfg.state_dim
            )
        self.compressor = compressor.to(next(trained.parameters()).device)
        self.bottleneck = StateBottleneck(cfg.state_bottleneck, cfg.num_state_tokens, cfg.state_dim)
        self.to(next(trained.parameters()).device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, N, D) float32."""
        check_pixels(pixels, "pixels")
        features = self.trained.features(pixels)
        return self.bottleneck(self.compressor(features).float())

    def target_manifest(self) -> dict:
        own = nn.ModuleDict({"compressor": self.compressor, "bottleneck": self.bottleneck})
        facts = {"kind": "untrained_stamo", "seed": self.seed, "backbone_of": fingerprint(self.trained)}
        return {
            "target_kind": "untrained_stamo",
            "encoder_fingerprint": _digest(facts, own),
            "num_state_tokens": int(self.config.num_state_tokens),
            "state_dim": int(self.config.state_dim),
            "target_seed": self.seed,
        }


class FeatureTargetEncoder(nn.Module):
    """The policy's own frozen vision backbone as a target: patch features of a frame, pooled to a small grid.

    The frame is resized to the backbone's input size and normalized per tower as the policy's processor does
    (DINOv2 channels, then SigLIP channels); the backbone's patch tokens (the ones the policy's projector reads)
    are average-pooled to ``grid x grid`` cells, giving (B, grid^2, embed_dim) with both towers' features side by
    side in each cell. Dense like the paper's DINOv2-feature target, but small: 4 tokens at grid 2 instead of 256
    patches, so the head stays as cheap on CPU as the StaMo head.

    Args:
        vision_backbone: the base policy's vision backbone before LoRA is attached (copied and frozen here, so
            fine-tuning never changes the target).
        normalize_params: the processor's per-tower ``{"mean", "std"}`` (OpenVLAImageProcessor.normalize_params).
        image_size: the backbone's input side.
        grid: side of the pooled grid.
    """

    def __init__(self, vision_backbone: nn.Module, normalize_params: list[dict], image_size: int, grid: int):
        super().__init__()
        self.backbone = copy.deepcopy(vision_backbone).eval().requires_grad_(False)
        self.image_size, self.grid = int(image_size), int(grid)
        self.normalize_params = [{"mean": list(p["mean"]), "std": list(p["std"])} for p in normalize_params]
        mean = torch.tensor([v for p in self.normalize_params for v in p["mean"]]).view(1, -1, 1, 1)
        std = torch.tensor([v for p in self.normalize_params for v in p["std"]]).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.token_dim = int(vision_backbone.embed_dim)
        side = round(int(vision_backbone.num_patches) ** 0.5)
        if side * side != int(vision_backbone.num_patches) or grid > side:
            raise ValueError(
                f"adapter.feature_grid={grid} needs a square patch grid of at least {grid} x {grid}; the backbone "
                f"has {vision_backbone.num_patches} patches"
            )
        self.side = side

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, grid^2, embed_dim) float32."""
        check_pixels(pixels, "pixels")
        x = resize(pixels.float(), self.image_size)
        towers = self.mean.shape[1] // 3
        x = (x.repeat(1, towers, 1, 1) - self.mean.to(x.device)) / self.std.to(x.device)
        patches = self.backbone(x).float()  # (B, P, E)
        fmap = patches.transpose(1, 2).reshape(len(x), self.token_dim, self.side, self.side)
        return F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2).contiguous()

    def target_manifest(self) -> dict:
        facts = {
            "kind": "backbone_features",
            "grid": self.grid,
            "image_size": self.image_size,
            "normalize": self.normalize_params,
        }
        return {
            "target_kind": "backbone_features",
            # the weights at bfloat16 precision: a cache made from a float32 base on CPU serves a GPU run that
            # loads the same base in bfloat16
            "encoder_fingerprint": _digest(facts, self.backbone, torch.bfloat16),
            "num_state_tokens": self.grid * self.grid,
            "state_dim": self.token_dim,
            "feature_grid": self.grid,
        }


def build_target_encoder(
    cfg: StaMoAdapterConfig,
    stamo_encoder: nn.Module | None = None,
    base: nn.Module | None = None,
    processor=None,
) -> nn.Module | None:
    """The frozen per-frame encoder of ``cfg.target`` (None for target='none').

    Args:
        cfg: the adapter config (target, target_seed, feature_grid).
        stamo_encoder: the trained StaMo encoder (state, motion, untrained).
        base: the base policy before LoRA is attached (features: its vision backbone is copied).
        processor: the base policy's processor (features: its image normalization).

    Raises:
        ValueError: what the target needs is missing (naming it).
    """
    kind = cfg.target_spec.frames
    if kind is None:
        return None
    if kind == "backbone_features":
        if base is None or getattr(base, "vision_backbone", None) is None or processor is None:
            raise ValueError(
                "adapter.target='features' needs the base policy (an OpenVLA model with vision_backbone) and its "
                "processor to compute the backbone's features"
            )
        image = getattr(processor, "image_processor", processor)
        size = int(image.input_sizes[0][-1])
        return FeatureTargetEncoder(base.vision_backbone, image.normalize_params, size, cfg.feature_grid)
    if stamo_encoder is None:
        raise ValueError(
            f"adapter.target={cfg.target!r} needs a trained StaMo encoder: set stamo_path (or use the target cache)"
        )
    if kind == "untrained_stamo":
        return UntrainedStaMoEncoder(stamo_encoder, cfg.target_seed)
    return stamo_encoder
