"""Tiny (tests, demo), small (the CPU policy study) and mid-size (benchmarks) random-init OpenVLA presets.

All keep the upstream architecture and key names: the same timm model ids (DINOv2-reg4 with LayerScale,
SigLIP without class token and with the attention-pool head) with small widths/depths via
`timm_model_kwargs`, patch 14, and a small Llama. Tiny and mid take 224 px images (256 image tokens); small
takes 112 px (64 tokens per image), the documented departure that lets a policy learn on a 2-core CPU.
"""

from __future__ import annotations

import os
from typing import Any

from stamo_vla.vla.tokenization import EMPTY_TOKEN_ID, build_tiny_tokenizer

TINY_DATASET = "tiny_dataset"
TINY_BASE_VOCAB = 512  # 256 action tokens + text pieces; <PAD> = 512, LM vocab padded to 576
TINY_PAD_TO = 64


def tiny_norm_stats(action_dim: int = 7) -> dict:
    """Statistics for one fake dataset in the `dataset_statistics.json` format (gripper not normalized)."""
    q01 = [-0.5 - 0.1 * i for i in range(action_dim - 1)] + [0.0]
    q99 = [0.5 + 0.2 * i for i in range(action_dim - 1)] + [1.0]
    stats = {
        "q01": q01,
        "q99": q99,
        "min": q01,
        "max": q99,
        "mean": [0.0] * action_dim,
        "std": [0.3] * action_dim,
    }
    stats["mask"] = [True] * (action_dim - 1) + [False]
    proprio = {k: [0.0] * 8 for k in ("q01", "q99", "min", "max", "mean", "std")}
    return {TINY_DATASET: {"action": stats, "proprio": proprio, "num_transitions": 0, "num_trajectories": 0}}


def _config(
    hidden: int,
    layers: int,
    heads: int,
    vit_dims: tuple[int, int],
    vit_depth: int,
    base_vocab: int = TINY_BASE_VOCAB,
    **overrides: Any,
):
    from stamo_vla.vla.configuration_openvla import OpenVLAConfig

    text_config = {
        "model_type": "llama",
        "vocab_size": base_vocab + TINY_PAD_TO,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "pad_token_id": base_vocab,
    }
    kwargs = {
        "text_config": text_config,
        "pad_token_id": base_vocab,
        "pad_to_multiple_of": TINY_PAD_TO,
        "empty_token_id": EMPTY_TOKEN_ID,
        "llm_backbone_id": "tiny-llama",
        "timm_model_kwargs": [
            {"embed_dim": vit_dims[0], "depth": vit_depth, "num_heads": 2},
            {"embed_dim": vit_dims[1], "depth": vit_depth, "num_heads": 2},
        ],
        "norm_stats": tiny_norm_stats(),
    }
    kwargs.update(overrides)
    return OpenVLAConfig(**kwargs)


def tiny_config(**overrides: Any):
    """2-layer Llama (width 32), 2-block ViTs (widths 32 / 48); ~0.3M parameters."""
    return _config(hidden=32, layers=2, heads=2, vit_dims=(32, 48), vit_depth=2, **overrides)


def small_config(**overrides: Any):
    """The CPU policy-study preset: 4-layer Llama (width 256), 3-block ViTs (width 128), 112 px; ~5.2M parameters.

    Sized so that full training of the base and LoRA fine-tuning each fit in well under an hour on 2 cores
    (``stamo_vla.study``). 112 px with patch 14 gives an 8 x 8 grid, a quarter of openvla-7b's tokens. The
    base vocabulary has room (1024 ids) for BPE merges learned on the training prompts (`build_processor`),
    which cut a LIBERO prompt from ~130 character tokens to ~25, as Llama's tokenizer does.
    """
    overrides.setdefault("image_sizes", [112, 112])
    return _config(
        hidden=256, layers=4, heads=4, vit_dims=(128, 128), vit_depth=3, base_vocab=1024, **overrides
    )


def mid_config(**overrides: Any):
    """A small but less trivial preset for throughput benchmarks: 4-layer Llama (width 256), 4-block ViTs."""
    return _config(hidden=256, layers=4, heads=4, vit_dims=(128, 128), vit_depth=4, **overrides)


def build_processor(config: Any, instructions: list[str] | None = None):
    """Tiny tokenizer + image processor matching `config`.

    Args:
        config: the model's config (vocabulary size, image sizes).
        instructions: task instructions whose prompts the tokenizer learns BPE merges on (None: characters only).
    """
    from stamo_vla.vla.processing_openvla import OpenVLAImageProcessor, OpenVLAProcessor, build_prompt

    corpus = [build_prompt(i) for i in instructions] if instructions else None
    tokenizer = build_tiny_tokenizer(
        config.base_vocab_size, config.n_action_bins, config.llm_max_length, corpus
    )
    size = config.image_sizes
    image_processor = OpenVLAImageProcessor(
        use_fused_vision_backbone=bool(config.use_fused_vision_backbone),
        image_resize_strategy=config.image_resize_strategy,
        input_sizes=[[3, *size]] * (2 if config.use_fused_vision_backbone else 1),
    )
    return OpenVLAProcessor(image_processor, tokenizer, empty_token_id=config.empty_token_id)


def build_tiny(
    save_dir: str | os.PathLike | None = None,
    seed: int = 0,
    config: Any = None,
    instructions: list[str] | None = None,
):
    """Random-init tiny model + processor (tokenizer made locally, nothing downloaded).

    Args:
        save_dir: when given, both are written there in the upstream checkpoint layout.
        seed: torch seed for the random weights.
        config: another preset (e.g. `mid_config()`); default `tiny_config()`.
        instructions: task instructions the tokenizer learns BPE merges on (see `build_processor`).

    Returns:
        (model in eval mode, processor).
    """
    import torch

    from stamo_vla.vla.configuration_openvla import register_auto_classes
    from stamo_vla.vla.loading import save_checkpoint
    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction

    register_auto_classes()
    config = config or tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OpenVLAForActionPrediction(config).eval()
    processor = build_processor(config, instructions)
    if save_dir is not None:
        save_checkpoint(model, processor, save_dir)
    return model, processor
