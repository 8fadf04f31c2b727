"""OpenVLA model: fused timm ViT featurizers -> GELU-MLP projector -> Llama, state-dict compatible upstream.

LLM sequence layout: `[BOS, n_patches image tokens, rest of the text]`; so the logit at position
`num_vision_tokens + j` predicts text token `j + 1`, and patch positions carry label -100.

The multimodal embedding step (`embed_multimodal`) is separate from running the LLM (`run_language_model`)
so variants (parallel decoding with 4-D masks, extra proprio tokens) can hook in at the `inputs_embeds`
level without re-implementing the backbone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput

from stamo_vla.keys import ATTENTION_MASK, IGNORE_INDEX, INPUT_IDS, LABELS, PIXEL_VALUES
from stamo_vla.vla.configuration_openvla import OpenVLAConfig
from stamo_vla.vla.generation import predict_action
from stamo_vla.vla.loading import disable_unsupported_bnb_cpu_packing, prepare_load
from stamo_vla.vla.metrics import action_token_loss
from stamo_vla.vla.vision_openvla import LayerScale, OpenVLAProjector, OpenVLAVisionBackbone


@dataclass
class OpenVLACausalLMOutput(ModelOutput):
    """Output of `OpenVLAForActionPrediction.forward` (sequence axis includes the image tokens)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    projector_features: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # labels aligned with the multimodal sequence (-100 on patches)


@dataclass
class MultimodalInputs:
    """LLM inputs after inserting image tokens after BOS: everything is (B, n_patches + T, ...)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    projector_features: torch.Tensor


class OpenVLAPreTrainedModel(PreTrainedModel):
    config_class = OpenVLAConfig
    config: OpenVLAConfig
    base_model_prefix = "model"  # no such submodule: keys are loaded as-is, like upstream
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenVLAProjector", "LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # timm initialized the featurizers in their constructors with their own schemes: keep those
        if getattr(module, "_timm_initialized", False) or isinstance(module, LayerScale):
            return
        super()._init_weights(module)


class OpenVLAForActionPrediction(OpenVLAPreTrainedModel):
    """OpenVLA policy: `vision_backbone`, `projector`, `language_model` (a transformers LlamaForCausalLM)."""

    def __init__(self, config: OpenVLAConfig):
        super().__init__(config)
        self.vision_backbone = OpenVLAVisionBackbone(config)
        self.projector = OpenVLAProjector(
            bool(config.use_fused_vision_backbone),
            self.vision_backbone.embed_dim,
            config.text_config.hidden_size,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load an upstream-layout checkpoint directory (no `trust_remote_code`).

        Checks the directory first and raises clear errors (missing directory / config / weights,
        wrong model_type, missing or unexpected keys, shape mismatches). Extra keyword arguments over
        transformers': `load_in_4bit`, `load_in_8bit` (bitsandbytes; CPU computes in fp32); placement of
        quantized models goes through `device_map`. `attn_implementation` defaults to "sdpa";
        "flash_attention_2" falls back to sdpa with a warning when unavailable. A
        `dataset_statistics.json` beside the weights replaces `config.norm_stats`.

        Args:
            pretrained_model_name_or_path: the checkpoint directory.
            *args: passed to transformers' ``from_pretrained``.
            **kwargs: passed to transformers' ``from_pretrained``, with the extra keywords above.
        """
        directory, kwargs, stats = prepare_load(pretrained_model_name_or_path, kwargs)
        loaded = super().from_pretrained(str(directory), *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        if "quantization_config" in kwargs:
            disable_unsupported_bnb_cpu_packing(model)
        if stats:
            model.norm_stats = stats
        return loaded

    # --- upstream-compatible accessors -------------------------------------------------------------------
    @property
    def num_vision_tokens(self) -> int:
        """Tokens inserted after BOS (256 for 224px / patch 14)."""
        return self.vision_backbone.num_patches

    @property
    def norm_stats(self) -> dict:
        return self.config.norm_stats or {}

    @norm_stats.setter
    def norm_stats(self, value: dict) -> None:
        self.config.norm_stats = value

    @property
    def action_vocab_size(self) -> int:
        """Base vocab size the action bins count back from (32000 for openvla-7b)."""
        return self.config.base_vocab_size

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # --- forward pieces -----------------------------------------------------------------------------------
    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MultimodalInputs:
        """Embed text, run vision backbone + projector, and insert the image tokens after BOS.

        Args:
            input_ids: prompt ids (B, T).
            pixel_values: the processor's images.
            attention_mask: the prompt's mask (B, T), or None.
            labels: training labels (B, T), or None; the image positions get IGNORE_INDEX.
        """
        self._check_pixels(pixel_values, input_ids.shape[0])
        text = self.get_input_embeddings()(input_ids)
        patches = self.vision_backbone(pixel_values)
        projected = self.projector(patches).to(text.dtype)
        embeds = torch.cat([text[:, :1], projected, text[:, 1:]], dim=1)
        b, n = projected.shape[:2]
        mask = None
        if attention_mask is not None:
            ones = attention_mask.new_ones(b, n)
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        mm_labels = None
        if labels is not None:
            ignore = labels.new_full((b, n), IGNORE_INDEX)
            mm_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        return MultimodalInputs(embeds, mask, mm_labels, projected)

    def run_language_model(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
        """Run the Llama LM on prepared embeddings (kwargs: position_ids, cache, use_cache, ...).

        Args:
            inputs_embeds: the multimodal embeddings (B, S, D).
            attention_mask: their mask (B, S), or None.
            **kwargs: passed to the Llama model (position_ids, cache, use_cache, ...).
        """
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_projector_features: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> OpenVLACausalLMOutput:
        """Multimodal causal-LM forward.

        Args:
            input_ids: (B, T) long, starting with BOS; right padding.
            attention_mask: (B, T) bool/long.
            pixel_values: (B, 6, H, W) float (3 channels per featurizer); None = text only.
            labels: (B, T) long, -100 where not supervised.
            inputs_embeds: precomputed multimodal embeddings (skips the vision path).
            cache: a transformers Cache for incremental decoding (`past_key_values` is accepted too).
            output_hidden_states: return all LLM hidden states (B, n_patches + T, D) each.

        Returns:
            `OpenVLACausalLMOutput` with `loss` = mean CE over supervised next tokens.
        """
        cache = kwargs.pop("past_key_values", cache)
        use_cache = bool(use_cache) and not self.training
        projector_features, mm_labels = None, labels
        if inputs_embeds is None and pixel_values is not None and cache is None:
            mm = self.embed_multimodal(input_ids, pixel_values, attention_mask, labels)
            inputs_embeds, attention_mask, mm_labels = mm.inputs_embeds, mm.attention_mask, mm.labels
            projector_features = mm.projector_features
        elif inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        out = self.run_language_model(
            inputs_embeds,
            attention_mask,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        loss = causal_lm_loss(out.logits, mm_labels) if mm_labels is not None else None
        return OpenVLACausalLMOutput(
            loss=loss,
            logits=out.logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            projector_features=projector_features,
            labels=mm_labels,
        )

    def compute_loss(self, batch: dict, **forward_kwargs: Any) -> tuple[torch.Tensor, dict[str, float], Any]:
        """CE loss on the supervised tokens plus upstream's finetune metrics.

        Args:
            batch: dict with PIXEL_VALUES, INPUT_IDS, ATTENTION_MASK, LABELS (see `stamo_vla.keys`).
            forward_kwargs: passed to `forward` (e.g. `output_hidden_states=True`).

        Returns:
            (loss, metrics, outputs); metrics: `loss`, and those of `stamo_vla.vla.metrics.action_token_loss`:
            `loss_action` (CE over the supervised tokens: actions + EOS), `action_accuracy`, `action_l1`
            (normalized units) and `num_action_tokens`.
        """
        device = self.get_input_embeddings().weight.device
        out = self(
            input_ids=batch[INPUT_IDS].to(device),
            attention_mask=batch[ATTENTION_MASK].to(device),
            pixel_values=batch[PIXEL_VALUES].to(device),
            labels=batch[LABELS].to(device),
            **forward_kwargs,
        )
        with torch.no_grad():
            _, metrics = action_token_loss(
                out.logits,
                batch[INPUT_IDS].to(device),
                batch[LABELS].to(device),
                self.action_vocab_size,
                self.config.n_action_bins,
            )
        metrics["loss"] = float(out.loss.detach())
        return out.loss, metrics, out

    def predict_action(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Batched greedy decoding of one action per row, un-normalized with the BOUNDS_Q99 stats.

        See `stamo_vla.vla.generation.predict_action` for the arguments.

        Args:
            pixel_values: the processor's images.
            input_ids: prompt ids (B, T).
            attention_mask: their mask (B, T), or None.
            unnorm_key: the dataset whose statistics un-normalize the actions (None: the only one).
            **kwargs: see `stamo_vla.vla.generation.predict_action`.
        """
        if not bool(torch.isfinite(pixel_values).all()):
            raise ValueError(
                "pixel_values contain NaN or inf; pass finite images (uint8 RGB through the processor)."
            )
        actions = predict_action(
            self, pixel_values, input_ids, attention_mask, unnorm_key=unnorm_key, **kwargs
        )
        first = (
            actions[0] if isinstance(actions, tuple) else actions
        )  # (actions, extras) with extras requested
        if not np.all(np.isfinite(np.asarray(first, dtype=np.float64))):
            raise ValueError(
                f"predicted actions are not finite ({np.asarray(first).tolist()}): the dataset statistics used "
                "to un-normalize them hold NaN/inf. Recompute dataset_statistics.json with `stamo-vla stats`."
            )
        return actions

    def _check_pixels(self, pixel_values: torch.Tensor, batch_size: int) -> None:
        channels = self.vision_backbone.in_channels
        size = tuple(self.config.image_sizes)
        if (
            pixel_values.ndim != 4
            or pixel_values.shape[1] != channels
            or tuple(pixel_values.shape[2:]) != size
        ):
            raise ValueError(
                f"pixel_values: got shape {tuple(pixel_values.shape)}, expected (B, {channels}, {size[0]}, "
                f"{size[1]}); build it with OpenVLAProcessor / OpenVLAImageProcessor."
            )
        if pixel_values.shape[0] != batch_size:
            raise ValueError(
                f"pixel_values has batch {pixel_values.shape[0]} but input_ids has {batch_size}."
            )


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over labels != -100 (0 with a graph when nothing is supervised)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    count = (shift_labels != IGNORE_INDEX).sum()
    total = nn.functional.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / count.clamp(min=1)
