"""`OpenVLAOFTForActionPrediction`: a released OpenVLA-OFT checkpoint, run on stock transformers (no fork).

    from stamo_vla.vla import OpenVLAOFTForActionPrediction, OpenVLAProcessor

    vla = OpenVLAOFTForActionPrediction.from_pretrained("/models/openvla-7b-oft-finetuned-libero-spatial",
                                                        torch_dtype=torch.bfloat16).to("cuda")
    processor = OpenVLAProcessor.from_pretrained("/models/openvla-7b-oft-finetuned-libero-spatial")
    inputs = processor(prompt, image)                 # third-person image
    wrist = processor.image_processor(wrist_image)    # second camera
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"], wrist["pixel_values"]], dim=1)
    chunk = vla.predict_action(**inputs, unnorm_key="libero_spatial_no_noops", proprio=normalized_state)
    # chunk: (1, 8, 7) un-normalized actions

The directory is used unmodified: the merged OpenVLA weights load through `OpenVLAForActionPrediction`
(`dataset_statistics.json` replaces the config's statistics), and the L1 head and proprio projector from
``action_head--<step>_checkpoint.pt`` / ``proprio_projector--<step>_checkpoint.pt`` (`stamo_vla.vla.oft_loading`).
The forward is the fork's (`stamo_vla.vla.oft_forward`): bidirectional attention over all non-padding tokens,
zeroed action embeddings, the L1 head reading one position before each action slot, one pass per chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stamo_vla.configs import check_positive_int
from stamo_vla.vla.generation import check_unnorm_key, unnormalize_actions
from stamo_vla.vla.loading import CheckpointError, resolve_directory
from stamo_vla.vla.oft_forward import OFT_UNNORM_EPS, OFTModules, oft_predict
from stamo_vla.vla.oft_loading import (
    ACTION_HEAD,
    FILM_BACKBONE,
    PROPRIO_PROJECTOR,
    check_head_files,
    component_files,
    find_component,
    head_sizes,
    load_component,
    proprio_dim_of,
    read_component,
)

# OpenVLA-OFT's LIBERO constants (prismatic/vla/constants.py): NUM_ACTIONS_CHUNK, and the eval's
# num_images_in_input (third-person + wrist)
LIBERO_ACTION_CHUNK = 8
LIBERO_NUM_IMAGES = 2


class OpenVLAOFTForActionPrediction(nn.Module):
    """An OpenVLA base (`vla`) plus OFT's modules (`oft`: L1 action head, optional proprio projector).

    Args:
        vla: the `OpenVLAForActionPrediction` holding the merged weights and the statistics.
        oft: `OFTModules` built for `vla` (FiLM is not supported for released directories).
    """

    def __init__(self, vla: nn.Module, oft: nn.Module):
        super().__init__()
        self.vla = vla
        self.oft = oft

    @property
    def config(self):
        return self.vla.config

    @property
    def norm_stats(self) -> dict:
        return self.vla.norm_stats

    @norm_stats.setter
    def norm_stats(self, value: dict) -> None:
        self.vla.norm_stats = value

    @property
    def action_chunk(self) -> int:
        return self.oft.action_chunk

    @property
    def num_images(self) -> int:
        return self.oft.num_images

    @property
    def uses_proprio(self) -> bool:
        return self.oft.proprio_projector is not None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        num_images_in_input: int = LIBERO_NUM_IMAGES,
        action_chunk: int = LIBERO_ACTION_CHUNK,
        use_proprio: bool | None = None,
        step: int | None = None,
        **kwargs: Any,
    ) -> OpenVLAOFTForActionPrediction:
        """Load a released OpenVLA-OFT directory (e.g. moojink/openvla-7b-oft-finetuned-libero-spatial).

        Args:
            pretrained_model_name_or_path: the checkpoint directory (or a Hub id, fetched when not local).
            num_images_in_input: images channel-stacked in `pixel_values` (upstream eval: 2 for LIBERO).
            action_chunk: K, actions per pass (OFT's NUM_ACTIONS_CHUNK: 8 for LIBERO, 25 for ALOHA).
            use_proprio: None = use the proprio projector when its file is present (warning when it is not: an
                interrupted download looks the same); True requires it; False ignores it.
            step: which ``--<step>_checkpoint.pt`` files to use when the directory holds several.
            kwargs: passed to `OpenVLAForActionPrediction.from_pretrained` (torch_dtype / dtype,
                attn_implementation "sdpa" or "eager", load_in_4bit, device_map, output_loading_info, ...).

        Returns:
            The model; ``(model, loading_info)`` with ``output_loading_info=True``, as transformers returns
            (the head files are loaded strictly, so the info is the base model's).

        Raises:
            CheckpointError: a head file is missing, truncated, holds NaN/inf, comes from another step than its
                sibling, or does not fit the model (names the file).
        """
        from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction

        _check_load_arguments(num_images_in_input, action_chunk, kwargs.get("attn_implementation"))
        directory = resolve_directory(pretrained_model_name_or_path)
        heads = _read_head_files(directory, step, use_proprio)
        want_info = kwargs.pop("output_loading_info", False)
        vla, loading_info = OpenVLAForActionPrediction.from_pretrained(
            directory, output_loading_info=True, **kwargs
        )
        if getattr(vla.config.text_config, "_attn_implementation", None) == "flash_attention_2":
            raise ValueError("OFT needs attn_implementation 'sdpa' or 'eager' (a 4-D mask).")
        oft = _load_heads(vla, heads, action_chunk, num_images_in_input)
        model = cls(vla, oft).eval()
        model.requires_grad_(False)
        model.source = {"directory": str(Path(directory)), "action_head": heads.head_file.name}
        return (model, loading_info) if want_info else model

    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.Tensor,
        unnorm_key: str | None = None,
        proprio: torch.Tensor | np.ndarray | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        unnormalize: bool = True,
        **kwargs: Any,
    ) -> np.ndarray:
        """One parallel-decoding pass per batch: (B, K, A) actions, un-normalized with the checkpoint's statistics.

        The call follows upstream OFT's ``vla.predict_action(**inputs, unnorm_key=..., proprio=...)``; the heads come
        from the directory, so upstream's ``action_head`` / ``proprio_projector`` arguments are not taken. Rows may
        be padded on either side; each row gives what it gives alone.

        Args:
            input_ids: (B, T) prompt ids from the processor ("▁" is appended when missing, as upstream).
            unnorm_key: dataset key of ``dataset_statistics.json`` (None when there is exactly one).
            proprio: (B, P) or (P,) proprio, *normalized* with the dataset's proprio statistics (as upstream's
                caller does, `normalize_proprio`); required when the directory has a proprio projector.
            pixel_values: (B, 6 * num_images, 224, 224): third-person, then wrist, stacked on dim 1.
            attention_mask: (B, T) of the processor (None = all ones).
            unnormalize: False returns the normalized actions.
            kwargs: upstream generation flags (``do_sample=False``) are accepted and ignored.

        Returns:
            (B, K, A) float64; the gripper dim stays in the dataset's [0, 1] convention (not un-normalized).
        """
        extra = sorted(set(kwargs) - {"do_sample"})
        if extra:
            raise TypeError(
                f"predict_action got unexpected arguments {extra}; the action head and proprio projector are "
                "loaded from the checkpoint directory."
            )
        if pixel_values is None:
            raise ValueError(
                "predict_action needs pixel_values (B, 6 * num_images, H, W) from the processor."
            )
        if proprio is not None and not self.uses_proprio:
            where = getattr(self, "source", {}).get("directory", "this checkpoint")
            raise ValueError(
                f"predict_action got proprio, but {where} has no {PROPRIO_PROJECTOR}--<step>_checkpoint.pt, so the "
                "model has no proprio token and would ignore it. If the file is missing (an interrupted download), "
                "fetch it; for a checkpoint trained without proprio, pass proprio=None."
            )
        stats = None
        if unnormalize:
            stats = self.norm_stats[check_unnorm_key(self.norm_stats, unnorm_key)]["action"]
        out = oft_predict(self.vla, self.oft, pixel_values, input_ids, attention_mask, proprio)
        normalized = out.actions.float().cpu().numpy().astype(np.float64)
        return unnormalize_actions(normalized, stats, OFT_UNNORM_EPS) if unnormalize else normalized


def _check_load_arguments(
    num_images_in_input: int, action_chunk: int, attn_implementation: str | None
) -> None:
    if num_images_in_input not in (1, 2):
        raise ValueError(f"num_images_in_input={num_images_in_input} is not valid; allowed: [1, 2]")
    check_positive_int("action_chunk", action_chunk)
    if attn_implementation == "flash_attention_2":
        raise ValueError(
            "attn_implementation='flash_attention_2' cannot take OFT's bidirectional 4-D mask; use 'sdpa' or 'eager'."
        )


@dataclass
class _HeadFiles:
    """The action head's (and the proprio projector's) checkpoint file and its state dict."""

    head_file: Path
    head_state: dict
    proprio_file: Path | None
    proprio_state: dict | None


def _read_head_files(directory: str | Path, step: int | None, use_proprio: bool | None) -> _HeadFiles:
    """The head files of `step`, checked (one step, readable) and read; refuses a FiLM (OFT+) checkpoint."""
    if component_files(directory, FILM_BACKBONE):
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint {directory} holds a FiLM vision backbone ({FILM_BACKBONE}--*_checkpoint.pt, "
            "OFT+): FiLM checkpoints are not supported by this loader."
        )
    head_file = find_component(directory, ACTION_HEAD, step, required=True)
    proprio_file = find_component(directory, PROPRIO_PROJECTOR, step, required=bool(use_proprio))
    if use_proprio is False:
        proprio_file = None
    check_head_files(directory, head_file, proprio_file, use_proprio)
    head_state = read_component(head_file)
    proprio_state = read_component(proprio_file) if proprio_file is not None else None
    return _HeadFiles(head_file, head_state, proprio_file, proprio_state)


def _load_heads(vla: nn.Module, heads: _HeadFiles, action_chunk: int, num_images: int) -> OFTModules:
    """`OFTModules` sized from the head files, on the model's device and dtype, with their weights loaded."""
    hidden = vla.config.text_config.hidden_size
    action_dim, width = head_sizes(heads.head_state, heads.head_file, hidden)
    proprio = heads.proprio_state
    oft = OFTModules(
        vla,
        action_chunk=action_chunk,
        action_dim=action_dim,
        num_images=num_images,
        proprio_dim=proprio_dim_of(proprio, heads.proprio_file) if proprio is not None else None,
        head_width=width,
    )
    # upstream casts both heads to the model's dtype (bf16) and device
    dtype = next(p for p in vla.parameters() if p.dtype.is_floating_point).dtype
    oft.to(device=vla.get_input_embeddings().weight.device, dtype=dtype)
    load_component(oft.action_head, heads.head_state, heads.head_file)
    if proprio is not None:
        load_component(oft.proprio_projector, proprio, heads.proprio_file)
    return oft
