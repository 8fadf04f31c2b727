"""Vision side of OpenVLA: timm ViT featurizers (second-to-last block patch tokens) and the MLP projector.

Featurizers are built with `timm.create_model` exactly as upstream does (random init, no head), so their
state-dict keys match the released checkpoints; the only change is LayerScale's parameter name
(`scale_factor`, as stored upstream, instead of timm's `gamma`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stamo_vla.vla.configuration_openvla import OpenVLAConfig


class LayerScale(nn.Module):
    """timm LayerScale with its parameter named `scale_factor`, the name in the upstream checkpoints.

    (Upstream renamed timm's `gamma` because old transformers rewrote `gamma` keys on load.)
    """

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.scale_factor = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def _use_scale_factor(model: nn.Module) -> None:
    from timm.layers import LayerScale as TimmLayerScale

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TimmLayerScale):
                new = LayerScale(child.gamma.shape[0])
                new.scale_factor.data.copy_(child.gamma.data)
                setattr(parent, name, new)


def build_featurizer(
    timm_id: str, image_size: int, act_layer: str | None, overrides: dict | None
) -> nn.Module:
    """Build a timm ViT the way upstream does (random init, no head), plus test-size overrides.

    Args:
        timm_id: the timm model name.
        image_size: the input size.
        act_layer: the activation override (None: timm's default).
        overrides: further timm arguments (test-size models), or None.
    """
    import timm

    kwargs: dict[str, Any] = {
        "pretrained": False,
        "num_classes": 0,
        "img_size": image_size,
        "act_layer": act_layer,
    }
    kwargs.update(overrides or {})
    vit = timm.create_model(timm_id, **kwargs)
    _use_scale_factor(vit)
    for module in vit.modules():
        module._timm_initialized = True
    if len(vit.blocks) < 2:
        raise ValueError(f"featurizer {timm_id}: needs at least 2 blocks, has {len(vit.blocks)}")
    return vit


def second_to_last_patches(vit: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens after the second-to-last block: (B, n_patches, embed_dim), no prefix, no norm."""
    (tokens,) = vit.forward_intermediates(
        pixel_values.to(vit.patch_embed.proj.weight.dtype),
        indices=[len(vit.blocks) - 2],
        norm=False,
        stop_early=True,  # the last block's output is never used upstream: skip computing it
        intermediates_only=True,
        output_fmt="NLC",
    )
    return tokens


class OpenVLAVisionBackbone(nn.Module):
    """One or two featurizers; fused: channels 0:3 -> `featurizer`, 3:6 -> `fused_featurizer`, concat dims."""

    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        overrides = config.timm_model_kwargs or [None] * len(config.timm_model_ids)
        acts, size = config.timm_override_act_layers, config.image_sizes[0]
        self.use_fused = bool(config.use_fused_vision_backbone)
        self.featurizer = build_featurizer(config.timm_model_ids[0], size, acts[0], overrides[0])
        if self.use_fused:
            self.fused_featurizer = build_featurizer(config.timm_model_ids[1], size, acts[1], overrides[1])

    @property
    def embed_dim(self) -> int:
        dim = self.featurizer.embed_dim
        return dim + self.fused_featurizer.embed_dim if self.use_fused else dim

    @property
    def num_patches(self) -> int:
        return self.featurizer.patch_embed.num_patches

    @property
    def in_channels(self) -> int:
        return 6 if self.use_fused else 3

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.use_fused:
            return second_to_last_patches(self.featurizer, pixel_values)
        img, img_fused = torch.split(pixel_values, [3, 3], dim=1)
        patches = second_to_last_patches(self.featurizer, img)
        return torch.cat([patches, second_to_last_patches(self.fused_featurizer, img_fused)], dim=2)


class OpenVLAProjector(nn.Module):
    """Fused: fc1 (v -> 4v), GELU, fc2 (4v -> llm), GELU, fc3 (llm -> llm); else fc1 (v -> llm), GELU, fc2."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act_fn1(self.fc1(patches)))
        return self.fc3(self.act_fn2(x)) if self.fused else x
