"""`StaMoAdapterModel`: a VLA with LoRA (peft) plus the StaMo future-state head; owns its loss and metrics."""

from __future__ import annotations

import torch
from torch import nn

from stamo_vla import keys as K
from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.heads import StateHead, future_loss
from stamo_vla.adapter.losses import readout_positions
from stamo_vla.stamo.pixels import resize
from stamo_vla.vla.metrics import action_token_loss


def base_model_of(vla: nn.Module) -> nn.Module:
    """The underlying transformers model, with or without a peft wrapper."""
    get_base = getattr(vla, "get_base_model", None)
    return get_base() if callable(get_base) else vla


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or getattr(config, "get_text_config", lambda: config)()
    for cfg in (text, config):
        size = getattr(cfg, "hidden_size", None)
        if size:
            return int(size)
    raise ValueError(f"{type(model).__name__}.config has no hidden_size; cannot size the StaMo head")


def action_vocab_size(model: nn.Module) -> int:
    """Base vocabulary size whose last 256 ids are the action tokens (32000 for OpenVLA)."""
    for attr in ("action_vocab_size", "vocab_size"):
        value = getattr(model, attr, None)
        if isinstance(value, int):
            return value
    config = model.config
    text = getattr(config, "text_config", None) or config
    pad = getattr(config, "pad_to_multiple_of", 0) or 0
    return int(text.vocab_size) - int(pad)


class StaMoAdapterModel(nn.Module):
    """A causal VLA with LoRA adapters and an optional head predicting the future StaMo state or motion.

    ``forward(batch) -> (loss, metrics)``: token cross-entropy on the action tokens (+ EOS) plus, when the config
    has a head, lambda_future * (MSE + L1) between the predicted and target state/motion. Targets come from the
    batch (``FUTURE_STATE`` and ``STATE`` from the target cache) or, when those are absent, from the frozen StaMo
    encoder applied to ``FUTURE_STAMO_PIXELS`` / ``STAMO_PIXELS``.
    """

    def __init__(
        self,
        vla: nn.Module,
        config: StaMoAdapterConfig,
        head: StateHead | None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.vla = vla
        self.config = config
        self.head = head
        self.vocab_size = vocab_size if vocab_size is not None else action_vocab_size(base_model_of(vla))
        # Frozen helpers are kept out of the module tree so they are never saved, wrapped by DDP or optimized.
        self._frozen = {"encoder": encoder, "decoder": decoder}

    @property
    def encoder(self) -> nn.Module | None:
        return self._frozen["encoder"]

    @property
    def decoder(self) -> nn.Module | None:
        return self._frozen["decoder"]

    def set_stamo(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None) -> None:
        """Attach the frozen StaMo encoder (on-the-fly targets) and/or decoder (decoder loss, visualization)."""
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module is not None:
                module.eval().requires_grad_(False)
                self._frozen[name] = module

    # ------------------------------------------------------------------ targets
    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError(
                f"the batch has no cached targets ('future_state') and no target encoder is attached "
                f"(target={self.config.target!r}). Build the target cache (`stamo-vla cache-targets --target "
                f"{self.config.target}`) or pass the encoder to attach(..., stamo_encoder=...)."
            )
        return self.encoder.encode(pixels).float()

    def targets(self, batch: dict) -> torch.Tensor:
        """The head's regression target for this batch, (B, N, D), in raw (un-standardized) units: f(t+h), or
        f(t+h) - f(t) for a difference target, of the target's frozen per-frame encoder f."""
        future = batch.get(K.FUTURE_STATE)
        if future is None:
            future = self._encode(batch[K.FUTURE_STAMO_PIXELS])
        if not self.config.target_spec.difference:
            return future.float()
        return (future - self._current(batch)).float()

    def _current(self, batch: dict) -> torch.Tensor:
        current = batch.get(K.STATE)
        return self._encode(batch[K.STAMO_PIXELS]) if current is None else current

    # ------------------------------------------------------------------ forward
    def readout(self, hidden: torch.Tensor, batch: dict, offset: int) -> torch.Tensor:
        """The hidden state the head reads, (B, H), from the last-layer `hidden` (B, L, H) whose first `offset`
        positions past BOS are inserted (vision) tokens.

        Args:
            hidden: last-layer hidden states over the whole sequence, (B, L, H).
            batch: the batch (its labels, or prompt_length, locate the position).
            offset: inserted (vision) positions after BOS: ``L - T`` for T text tokens.
        """
        if self.config.readout == "mean_vision":
            if offset <= 0:
                raise ValueError(
                    "readout='mean_vision' needs vision tokens inserted into the sequence (offset > 0)"
                )
            return hidden[:, 1 : 1 + offset].mean(dim=1)
        positions = readout_positions(batch[K.LABELS], hidden.shape[1], batch.get(K.PROMPT_LENGTH))
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch[K.LABELS]
        has_action = batch.get(K.HAS_ACTION)
        if has_action is not None and not bool(has_action.all()):
            labels = labels.masked_fill(~has_action.to(labels.device).bool()[:, None], K.IGNORE_INDEX)
        outputs = self.vla(
            input_ids=batch[K.INPUT_IDS],
            attention_mask=batch[K.ATTENTION_MASK],
            pixel_values=batch[K.PIXEL_VALUES],
            output_hidden_states=self.config.has_head,
            use_cache=False,
        )
        loss_action, metrics = action_token_loss(outputs.logits, batch[K.INPUT_IDS], labels, self.vocab_size)
        loss = self.config.lambda_action * loss_action
        if self.head is not None:
            hidden = outputs.hidden_states[-1]
            offset = hidden.shape[1] - batch[K.INPUT_IDS].shape[1]
            loss = loss + self.future_terms(self.readout(hidden, batch, offset), batch, metrics)
        metrics["loss"] = loss.item()
        return loss, metrics

    def future_terms(self, readout: torch.Tensor, batch: dict, metrics: dict[str, float]) -> torch.Tensor:
        """lambda_future * (MSE + L1) between the head's prediction from `readout` (B, H) and the standardized
        target, plus the optional decoder loss; their metrics are added to `metrics`.

        Args:
            readout: the hidden state the head reads, (B, H) (`readout`).
            batch: the batch holding the target (cached states, or pixels for the frozen encoder).
            metrics: updated with the future (and decoder) loss terms.
        """
        pred = self.head(readout.float())
        target = self.head.standardize(self.targets(batch).to(pred.device))
        loss_future, future_metrics = future_loss(pred, target)
        metrics.update(future_metrics, loss_future=loss_future.item())
        loss = self.config.lambda_future * loss_future
        if self.config.lambda_decoder > 0:
            loss_decoder = self._decoder_loss(pred, batch)
            metrics["loss_decoder"] = loss_decoder.item()
            loss = loss + self.config.lambda_decoder * loss_decoder
        return loss

    def future_state_from(
        self, readout: torch.Tensor, current_state: torch.Tensor | None, stamo_pixels: torch.Tensor | None
    ) -> torch.Tensor:
        """Predicted future target frame (B, N, D), un-standardized, from the readout hidden state; for
        target='motion' it is s_t + motion, with s_t given or encoded from `stamo_pixels` by the attached frozen
        encoder.

        Args:
            readout: the hidden state the head reads, (B, H).
            current_state: s_t (B, N, D) for a motion target, or None.
            stamo_pixels: frames (B, 3, S, S) in [0, 1] to encode s_t from when it is not given.
        """
        pred = self.head.unstandardize(self.head(readout.float()))
        if not self.config.target_spec.difference:
            return pred
        if current_state is None:
            if stamo_pixels is None:
                raise ValueError(
                    "target='motion' predicts s_{t+h} - s_t: pass current_state or stamo_pixels (with an encoder "
                    "attached) to get the future state"
                )
            current_state = self._encode(stamo_pixels)
        return current_state.to(pred.device).float() + pred

    def _decoder_loss(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """Flow-matching loss of the frozen DiT decoder reconstructing the future frame from the predicted state."""
        if self.decoder is None:
            raise ValueError(
                "lambda_decoder > 0 needs a StaMo decoder: attach(..., stamo_decoder=autoencoder.decoder)"
            )
        if K.FUTURE_STAMO_PIXELS not in batch:
            raise ValueError("lambda_decoder > 0 needs 'future_stamo_pixels' (the future frame) in the batch")
        state = self.head.unstandardize(pred)
        if self.config.target_spec.difference:
            state = self._current(batch).to(pred.device) + state

        pixels = batch[K.FUTURE_STAMO_PIXELS]
        with torch.no_grad():
            latents = self.decoder.images_to_latents(resize(pixels, self.decoder.config.image_size))
        loss, _ = self.decoder.loss(latents, state)
        return loss

    # ------------------------------------------------------------------ inference
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
    ):
        """Batched greedy actions, exactly the base policy's `predict_action` when the head is not asked for.

        Args:
            return_future_state: also return the predicted future StaMo state (B, N, D). The head reads the
                prefill pass's hidden state, so the only extra cost is the head MLP. For target='motion' the
                state is ``s_t + predicted motion``, with s_t given as `current_state` or encoded from
                `stamo_pixels` ((B, 3, H, W) in [0, 1]) by the attached frozen encoder.

        Returns:
            actions (B, 7), or (actions, future_states) with `return_future_state`.
        """
        base = base_model_of(self.vla)
        if not return_future_state:
            return base.predict_action(pixel_values, input_ids, attention_mask, unnorm_key=unnorm_key)
        if self.head is None:
            raise ValueError("this adapter has target='none': it has no future-state head")
        if self.config.readout != "action_query":
            raise ValueError(
                f"return_future_state needs readout='action_query'; this adapter uses {self.config.readout!r}"
            )
        actions, hidden = base.predict_action(
            pixel_values, input_ids, attention_mask, unnorm_key=unnorm_key, return_hidden=True
        )
        return actions, self.future_state_from(hidden, current_state, stamo_pixels)

    @torch.no_grad()
    def decode_future(
        self, future_states: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Predicted future states (B, N, D) -> images (B, 3, S, S) in [0, 1] through the frozen DiT decoder.

        Args:
            future_states: predicted states (B, N, D).
            steps: sampler steps (None = the decoder's default).
            generator: the noise generator (for reproducible images).
        """
        if self.decoder is None:
            raise ValueError(
                "decode_future needs the StaMo decoder: set_stamo(decoder=StaMoAutoencoder...decoder)"
            )
        return self.decoder.sample(future_states.float(), steps=steps, generator=generator)

    def save_pretrained(self, directory, overwrite: bool = False) -> None:
        """Write the adapter directory (`save_adapter`) with the base model's current statistics."""
        from stamo_vla.adapter.attach import save_adapter

        save_adapter(self, directory, overwrite=overwrite)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
