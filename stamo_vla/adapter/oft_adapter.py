"""`StaMoOFTAdapterModel`: the OpenVLA-OFT variant (action chunk, parallel decoding, L1 head) + the StaMo head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stamo_vla import keys as K
from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.heads import StateHead
from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel, base_model_of
from stamo_vla.vla.generation import check_unnorm_key, unnormalize_actions
from stamo_vla.vla.oft_forward import OFT_UNNORM_EPS, oft_predict


class StaMoOFTAdapterModel(StaMoAdapterModel):
    """LoRA + OFT modules (L1 action head, proprio projector, FiLM) + the optional StaMo future-state head.

    ``forward(batch) -> (loss, metrics)``: ``lambda_action * L1(actions)`` over the K-step chunk plus, with a head,
    ``lambda_future * (MSE + L1)`` on the StaMo target read at the last prompt position before the action block.
    Batches come from `OFTBatchTransform` (PROMPT_LENGTH marks the action block).
    """

    def __init__(
        self,
        vla: nn.Module,
        config: StaMoAdapterConfig,
        head: StateHead | None,
        oft: nn.Module,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__(vla, config, head, encoder=encoder, decoder=decoder, vocab_size=0)
        self.oft = oft
        oft.install(base_model_of(vla))

    def _run(self, batch: dict):
        return self.oft(
            base_model_of(self.vla),
            batch[K.INPUT_IDS],
            batch[K.ATTENTION_MASK],
            batch[K.PIXEL_VALUES],
            batch[K.PROMPT_LENGTH],
            batch.get(K.PROPRIO),
        )

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = self._run(batch)
        target = batch[K.ACTIONS].to(out.actions.device, out.actions.dtype)
        if target.shape != out.actions.shape:
            raise ValueError(
                f"batch actions have shape {tuple(target.shape)} but the head predicts {tuple(out.actions.shape)}; "
                f"the data's action_chunk must equal the adapter's ({self.config.action_head.action_chunk})."
            )
        has_action = batch.get(K.HAS_ACTION)
        weight = torch.ones(target.shape[0], device=target.device)
        if has_action is not None:
            weight = has_action.to(target.device).float()
        errors = torch.abs(out.actions.float() - target.float()) * weight[:, None, None]
        count = weight.sum().clamp(min=1) * target.shape[1] * target.shape[2]
        loss_action = errors.sum() / count  # 0 with a graph for an all action-free batch
        per_step = errors.sum(dim=(0, 2)).detach() / (count / target.shape[1])
        metrics = {
            "loss_action": loss_action.item(),
            "action_l1": loss_action.item(),
            "action_l1_current": per_step[0].item(),  # upstream's curr_action_l1_loss
            "action_l1_next": per_step[1:].mean().item() if per_step.numel() > 1 else 0.0,
        }
        loss = self.config.lambda_action * loss_action
        if self.head is not None:
            loss = loss + self.future_terms(out.readout_hidden, batch, metrics)
        metrics["loss"] = loss.item()
        return loss, metrics

    @torch.no_grad()
    def predict_action(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        unnorm_key: str | None = None,
        return_future_state: bool = False,
        current_state: torch.Tensor | None = None,
        stamo_pixels: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        unnormalize: bool = True,
    ):
        """K actions per row from ONE forward pass (parallel decoding).

        Args:
            pixel_values: (B, 6 * num_images, 224, 224) from the processor (third-person, then wrist).
            input_ids, attention_mask: prompt ids as the processor makes them ("▁" appended when missing).
            unnorm_key: dataset key of the statistics (None when there is exactly one).
            return_future_state: also return the predicted StaMo state (B, N, D), read in the same pass.
            current_state, stamo_pixels: s_t for target='motion' (see `StaMoAdapterModel.predict_action`).
            proprio: (B, P) *normalized* proprio when the model uses a proprio token.
            unnormalize: False returns the normalized actions.

        Returns:
            actions (B, K, A) float64 (gripper stays ~0..1), or (actions, future_states).
        """
        base = base_model_of(self.vla)
        if return_future_state and self.head is None:
            raise ValueError("this adapter has target='none': it has no future-state head")
        stats = None
        if unnormalize:
            stats = base.norm_stats[check_unnorm_key(base.norm_stats, unnorm_key)]["action"]
        was_training = self.training
        self.eval()
        try:
            out = oft_predict(base, self.oft, pixel_values, input_ids, attention_mask, proprio)
        finally:
            self.train(was_training)
        normalized = out.actions.float().cpu().numpy().astype(np.float64)
        actions = unnormalize_actions(normalized, stats, OFT_UNNORM_EPS) if unnormalize else normalized
        if not return_future_state:
            return actions
        return actions, self.future_state_from(out.readout_hidden, current_state, stamo_pixels)
