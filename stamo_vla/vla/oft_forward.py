"""The OpenVLA-OFT forward: extra inputs (wrist image, proprio token, FiLM), parallel decoding in ONE LLM pass.

Text layout (built by `OFTBatchTransform` for training and `oft_inference_ids` for inference)::

    [BOS, prompt ..., "▁", a_1 ... a_{K*A}, EOS]        prompt_length = index of a_1 = len(BOS..."▁")

LLM layout: ``[BOS, patches(image 1), patches(image 2)?, proprio token?, prompt ..., "▁", actions, EOS]``, exactly
as the released OpenVLA-OFT checkpoints run in their transformers fork:

- the action positions get zero embeddings (their token ids are irrelevant);
- attention is fully bidirectional over every non-padding position (prompt, image and proprio tokens included;
  `bidirectional_attention_mask`), so the EOS after the action block reaches every output;
- the L1 head reads the last hidden states one position *before* each action slot: the "▁" position and the first
  K*A - 1 action positions (upstream slices ``[NUM_PATCHES + NUM_PROMPT_TOKENS, ... + K*A)``, which starts at "▁");
- the StaMo head reads the "▁" position (`readout_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stamo_vla.vla.oft_modules import (
    L1RegressionActionHead,
    ProprioProjector,
    VisionFiLM,
    bidirectional_attention_mask,
)


@dataclass
class OFTInputs:
    """Prepared LLM inputs of one OFT pass (L = LLM sequence length)."""

    inputs_embeds: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, 1, L, L) additive float
    position_ids: torch.Tensor  # (B, L) long
    action_positions: torch.Tensor  # (B, K * A) long, LLM positions of the action block
    head_positions: torch.Tensor  # (B, K * A) long, positions the L1 head reads: action_positions - 1
    readout_positions: torch.Tensor  # (B,) long, LLM position of "▁" (reads the StaMo state)


@dataclass
class OFTOutput:
    actions: torch.Tensor  # (B, K, A) normalized actions
    readout_hidden: torch.Tensor  # (B, D) last hidden state at the readout position


class OFTModules(nn.Module):
    """The trainable OFT additions to an OpenVLA base: L1 action head, proprio projector, FiLM.

    Args:
        base: the `OpenVLAForActionPrediction` (used for sizes; it is not stored as a submodule).
        action_chunk: K.
        action_dim: A.
        num_images: 1 (third-person) or 2 (+ wrist), channel-stacked in `pixel_values`.
        proprio_dim: size of the proprio vector, or None for no proprio token.
        use_film: FiLM-condition the vision backbone on the average language embedding.
        head_width: MLP-ResNet width (None = LLM hidden size).
    """

    def __init__(
        self,
        base: nn.Module,
        action_chunk: int,
        action_dim: int = 7,
        num_images: int = 1,
        proprio_dim: int | None = None,
        use_film: bool = False,
        head_width: int | None = None,
    ):
        super().__init__()
        hidden = base.config.text_config.hidden_size
        self.action_chunk, self.action_dim, self.num_images = action_chunk, action_dim, num_images
        self.action_head = L1RegressionActionHead(hidden, action_dim, head_width)
        self.proprio_projector = ProprioProjector(proprio_dim, hidden) if proprio_dim else None
        self.film = VisionFiLM(_featurizers(base), hidden) if use_film else None

    @property
    def num_action_positions(self) -> int:
        return self.action_chunk * self.action_dim

    def install(self, base: nn.Module) -> None:
        """Hook FiLM into `base`'s vision blocks (no-op without FiLM); call after moving/loading weights."""
        if self.film is not None:
            self.film.install(_featurizers(base))

    # ------------------------------------------------------------------ inputs
    def _check(self, base, input_ids, pixel_values, prompt_length, proprio) -> None:
        b = input_ids.shape[0]
        channels = base.vision_backbone.in_channels
        expected = (b, channels * self.num_images, *base.config.image_sizes)
        if tuple(pixel_values.shape) != expected:
            what = "the third-person and the wrist image" if self.num_images == 2 else "one image"
            raise ValueError(
                f"pixel_values: got shape {tuple(pixel_values.shape)}, expected {expected}: this model takes "
                f"{what} ({channels} channels each, stacked on dim 1). Pass wrist images when num_images=2."
            )
        if self.proprio_projector is not None:
            want = (b, self.proprio_projector.proprio_dim)
            if proprio is None or tuple(proprio.shape) != want:
                got = None if proprio is None else tuple(proprio.shape)
                raise ValueError(
                    f"proprio: got {got}, expected shape {want} (normalized proprio; the model uses a proprio token)."
                )
        end = prompt_length.max().item() + self.num_action_positions
        if end > input_ids.shape[1] or prompt_length.min().item() < 1:
            raise ValueError(
                f"prompt_length {prompt_length.tolist()} + {self.num_action_positions} action positions does not fit "
                f"the {input_ids.shape[1]} text tokens; build the ids with OFTBatchTransform / oft_inference_ids."
            )

    def build_inputs(
        self,
        base: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        prompt_length: torch.Tensor,
        proprio: torch.Tensor | None = None,
        film_over_padding: bool = True,
    ) -> OFTInputs:
        """Embeddings, 4-D mask, positions and readout indices of one OFT pass (see the module docstring).

        `film_over_padding`: FiLM's language condition averages the embeddings of every non-action text position,
        padding included, as upstream training does (True); inference passes False so that a padded batch gives
        each row what the row alone (upstream's batch of one) gives.

        Args:
            base: the base VLA.
            input_ids: OFT ids (B, T), right padded (`oft_inference_ids` at inference).
            attention_mask: their mask (B, T).
            pixel_values: the processor's images.
            prompt_length: each row's prompt length (B,).
            proprio: proprio states (B, P), or None.
            film_over_padding: FiLM's language average includes the padding (training), or skips it
                (inference).
        """
        device = base.get_input_embeddings().weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device).bool()
        prompt_length = prompt_length.to(device).long()
        self._check(base, input_ids, pixel_values, prompt_length, proprio)
        b, t = input_ids.shape
        text = base.get_input_embeddings()(input_ids)
        index = torch.arange(t, device=device)[None]
        in_block = (index >= prompt_length[:, None]) & (
            index < prompt_length[:, None] + self.num_action_positions
        )
        text = (
            text * ~in_block[..., None]
        )  # empty action embeddings (upstream: `embeddings * ~all_actions_mask`)
        language = ~in_block if film_over_padding else attention_mask & ~in_block
        patches = self._vision(base, pixel_values.to(device), text, language)
        extra = [patches.to(text.dtype)]
        if self.proprio_projector is not None:
            weight = self.proprio_projector.fc1.weight
            extra.append(self.proprio_projector(proprio.to(device, weight.dtype))[:, None].to(text.dtype))
        extra = torch.cat(extra, dim=1)
        n = extra.shape[1]
        embeds = torch.cat([text[:, :1], extra, text[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(b, n), attention_mask[:, 1:]], dim=1)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        action_positions = n + prompt_length[:, None] + torch.arange(self.num_action_positions, device=device)
        return OFTInputs(
            inputs_embeds=embeds,
            attention_mask=bidirectional_attention_mask(mask, embeds.dtype),
            position_ids=positions,
            action_positions=action_positions,
            head_positions=action_positions - 1,
            readout_positions=n + prompt_length - 1,
        )

    def _vision(self, base, pixel_values, text, language_mask) -> torch.Tensor:
        """Each image through the same fused featurizers (one batched call): (B, num_images * P, D)."""
        b = pixel_values.shape[0]
        channels = base.vision_backbone.in_channels
        stacked = pixel_values.reshape(b * self.num_images, channels, *pixel_values.shape[2:])
        if self.film is not None:
            # upstream: the mean of the text embeddings at every non-action position (BOS, prompt, "▁", EOS and,
            # in a padded training batch, the padding); action embeddings are not yet zeroed there
            weights = language_mask[..., None].to(text.dtype)
            language = (text * weights).sum(1) / weights.sum(1).clamp(min=1)
            self.film.set_condition(language.repeat_interleave(self.num_images, dim=0))
        try:
            patches = base.vision_backbone(stacked)
        finally:
            if self.film is not None:
                self.film.set_condition(None)
        projected = base.projector(patches)
        return projected.reshape(b, self.num_images * projected.shape[1], projected.shape[2])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        base: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        prompt_length: torch.Tensor,
        proprio: torch.Tensor | None = None,
        film_over_padding: bool = True,
    ) -> OFTOutput:
        """One LLM pass: normalized actions (B, K, A) and the readout hidden state (B, D).

        Args:
            base: the base VLA.
            input_ids: OFT ids (B, T), right padded.
            attention_mask: their mask (B, T).
            pixel_values: the processor's images.
            prompt_length: each row's prompt length (B,).
            proprio: proprio states (B, P), or None.
            film_over_padding: see `build_inputs`.
        """
        inputs = self.build_inputs(
            base, input_ids, attention_mask, pixel_values, prompt_length, proprio, film_over_padding
        )
        hidden = base.get_decoder()(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        action_hidden = hidden[rows[:, None], inputs.head_positions]
        head_dtype = self.action_head.model.fc1.weight.dtype
        actions = self.action_head(action_hidden.to(head_dtype))
        return OFTOutput(actions=actions, readout_hidden=hidden[rows, inputs.readout_positions])


def _featurizers(base: nn.Module) -> list[nn.Module]:
    backbone = base.vision_backbone
    return [backbone.featurizer, *([backbone.fused_featurizer] if backbone.use_fused else [])]


def oft_inference_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_action_positions: int,
    empty_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt ids (any padding) -> right-padded OFT ids, mask and prompt lengths, as training lays them out.

    Each row becomes ``prompt + ["▁" if missing] + num_action_positions placeholders + [EOS]``. The placeholder
    ids are never seen by the model (their embeddings are zeroed); "▁" is used.

    Args:
        input_ids: prompt ids (B, T), any padding.
        attention_mask: their mask, or None (no padding).
        num_action_positions: placeholder positions per row (chunk x action dim).
        empty_token_id: the id of "▁".
        eos_token_id: the EOS id.
        pad_token_id: the padding id.

    Returns:
        (ids (B, T'), attention_mask (B, T') bool, prompt_length (B,) long).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rows = []
    for ids, m in zip(input_ids, attention_mask.bool()):
        row = ids[m].tolist()
        if not row:
            raise ValueError("predict_action: a row of input_ids has no attended tokens.")
        if row[-1] != empty_token_id:
            row.append(empty_token_id)
        rows.append(row)
    lengths = [len(r) for r in rows]
    total = max(lengths) + num_action_positions + 1
    ids = input_ids.new_full((len(rows), total), pad_token_id)
    mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    for i, row in enumerate(rows):
        full = row + [empty_token_id] * num_action_positions + [eos_token_id]
        ids[i, : len(full)] = torch.tensor(full, dtype=ids.dtype)
        mask[i, : len(full)] = True
    return ids, mask, torch.tensor(lengths, dtype=torch.long, device=ids.device)


# OpenVLA-OFT's `_unnormalize_actions` adds this to (q99 - q01)
OFT_UNNORM_EPS = 1e-8


def oft_predict(
    base: nn.Module,
    oft: OFTModules,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    proprio: torch.Tensor | None = None,
) -> OFTOutput:
    """One inference pass on processor outputs (any padding side): normalized (B, K, A) actions + readout.

    Each row is laid out as upstream's batch of one (prompt + "▁" + placeholders + EOS, right padded), FiLM's
    language average skips the padding, and bidirectional attention ignores it, so a batch equals its rows.

    Args:
        base: the base VLA.
        oft: the OFT modules (action head, proprio projector, FiLM).
        pixel_values: the processor's images.
        input_ids: prompt ids (B, T), any padding.
        attention_mask: their mask, or None.
        proprio: proprio states (B, P), or None.
    """
    config = base.config
    eos = getattr(config.text_config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    ids, mask, prompt_length = oft_inference_ids(
        input_ids,
        attention_mask,
        oft.num_action_positions,
        config.empty_token_id,
        int(eos if eos is not None else 2),
        config.pad_token_id,
    )
    if proprio is not None:
        proprio = torch.as_tensor(proprio).reshape(ids.shape[0], -1)  # upstream also takes one (P,) vector
    dtype = next(p for p in base.parameters() if p.dtype.is_floating_point).dtype
    pixel_values = pixel_values.to(dtype) if pixel_values.dtype.is_floating_point else pixel_values
    return oft(base, ids, mask, pixel_values, prompt_length, proprio, film_over_padding=False)
