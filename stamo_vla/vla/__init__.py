"""OpenVLA-compatible policy: config, fused DINOv2+SigLIP backbone, Llama LM, processor, batched decoding.

Loads upstream `openvla/openvla-7b`-layout checkpoints without `trust_remote_code`. Names are resolved
lazily so `import stamo_vla.vla` stays cheap (torch/transformers/timm load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OpenVLAConfig": "stamo_vla.vla.configuration_openvla",
    "register_auto_classes": "stamo_vla.vla.configuration_openvla",
    "OpenVLAForActionPrediction": "stamo_vla.vla.modeling_openvla",
    "OpenVLAOFTForActionPrediction": "stamo_vla.vla.oft_model",
    "ActionTokenizer": "stamo_vla.vla.action_tokenizer",
    "OpenVLAProcessor": "stamo_vla.vla.processing_openvla",
    "OpenVLAImageProcessor": "stamo_vla.vla.processing_openvla",
    "OpenVLABatchTransform": "stamo_vla.vla.processing_openvla",
    "build_prompt": "stamo_vla.vla.processing_openvla",
    "OpenVLAPolicy": "stamo_vla.vla.policy",
    "tiny_config": "stamo_vla.vla.tiny",
    "mid_config": "stamo_vla.vla.tiny",
    "build_tiny": "stamo_vla.vla.tiny",
    "build_tiny_tokenizer": "stamo_vla.vla.tokenization",
    "save_checkpoint": "stamo_vla.vla.loading",
    "CheckpointError": "stamo_vla.vla.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stamo_vla.vla' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    if name in (
        "OpenVLAConfig",
        "OpenVLAForActionPrediction",
        "OpenVLAOFTForActionPrediction",
        "OpenVLAPolicy",
    ):
        importlib.import_module("stamo_vla.vla.configuration_openvla").register_auto_classes()
    return value
