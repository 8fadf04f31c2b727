"""The StaMo head inside a training script that keeps its own model, loop and checkpoints (``patches/``).

Upstream OpenVLA's and OpenVLA-OFT's ``vla-scripts/finetune.py`` wrap their model in DDP, step their own
optimizer and save their own checkpoints. For them the adapter comes in three calls:

1. ``stamo = attach_from_cache(vla, cfg, cache_dirs)``: LoRA through peft (upstream's recipe by default) and the
   target head, shaped and standardized by the target caches; the script goes on with ``stamo.vla`` (the peft
   model) exactly as with its own ``get_peft_model``.
2. ``aux = StaMoAuxiliaryLoss(stamo)`` (wrapped in DDP like the script's other modules, its parameters added to the
   optimizer): ``aux(hidden_states, batch) -> (loss, metrics)`` is lambda_future * (MSE + L1) between the head's
   prediction, read at the position that predicts the first action token, and the cached target in the batch
   (`stamo_vla.data.upstream_samples`).
3. ``save_adapter(stamo, <checkpoint>/stamo_adapter, dataset_statistics=...)`` beside the script's checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from stamo_vla import keys as K
from stamo_vla.adapter.attach import attach
from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel
from stamo_vla.data.target_cache import read_manifest, target_statistics


def attach_from_cache(
    vla: nn.Module, cfg: StaMoAdapterConfig, cache_dirs: Sequence[str | Path], seed: int | None = None
) -> StaMoAdapterModel:
    """`attach` with the head's target shape, encoder fingerprint and standardization taken from target caches.

    Args:
        vla: the script's model (a transformers causal VLA returning hidden states), before LoRA.
        cfg: the adapter config (target, horizon, loss weight, LoRA settings).
        cache_dirs: one target cache per training dataset (``stamo-vla cache-targets``), all of one encoder.
        seed: seeds the LoRA and head initialization (`attach`).

    Raises:
        ValueError: caches of different encoders, or of another target than ``cfg.target`` reads.
    """
    from stamo_vla.provenance import Provenance

    manifests = [read_manifest(d) for d in cache_dirs]
    fingerprints = {m["encoder_fingerprint"] for m in manifests}
    if len(fingerprints) != 1:
        raise ValueError(f"the target caches {list(map(str, cache_dirs))} come from different encoders")
    kinds = {m["target_kind"] for m in manifests}
    if kinds != {cfg.target_spec.frames}:
        raise ValueError(
            f"target caches {list(map(str, cache_dirs))} hold {sorted(kinds)} frames; target={cfg.target!r} reads "
            f"{cfg.target_spec.frames!r} frames: build them with `stamo-vla cache-targets --target {cfg.target}`"
        )
    shape = (int(manifests[0]["num_state_tokens"]), int(manifests[0]["state_dim"]))
    record = Provenance(stamo_fingerprint=fingerprints.pop())
    model = attach(vla, cfg, provenance=record, seed=seed, target_shape=shape)
    if model.head is not None and cfg.target_norm == "dataset":
        stats = target_statistics(cache_dirs, cfg.horizon, cfg.target_spec.difference)
        model.head.set_target_statistics(stats["mean"], stats["std"])
    return model


class StaMoAuxiliaryLoss(nn.Module):
    """The StaMo head of an attached adapter as a module of its own: wrap it in DDP beside the script's model.

    ``forward(hidden_states, batch) -> (loss, metrics)``: `hidden_states` is the model's last-layer output over
    the whole sequence (vision tokens included), (B, L, H); `batch` holds ``input_ids``, ``labels`` and the
    cached ``future_state`` (and ``state`` for a motion target), as `collate_with_targets` gives them.
    """

    def __init__(self, model: StaMoAdapterModel) -> None:
        super().__init__()
        if model.head is None:
            raise ValueError(f"target={model.config.target!r} has no head: there is no auxiliary loss to add")
        self.head = model.head
        self._adapter = {"model": model}  # kept out of the module tree: the script's DDP owns the backbone

    def forward(self, hidden_states: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        model = self._adapter["model"]
        offset = hidden_states.shape[1] - batch[K.INPUT_IDS].shape[1]
        targets = {k: v.to(hidden_states.device) for k, v in batch.items() if k in (K.STATE, K.FUTURE_STATE)}
        readout = model.readout(hidden_states, {**batch, **targets}, offset)
        metrics: dict[str, float] = {}
        loss = model.future_terms(readout, {**batch, **targets}, metrics)
        return loss, metrics
