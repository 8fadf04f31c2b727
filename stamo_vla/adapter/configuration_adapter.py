"""`StaMoAdapterConfig`: what the StaMo adapter predicts, how it reads the backbone, and its LoRA settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from stamo_vla.adapter.action_heads import ActionHeadConfig, TokenActionHead, upgrade_legacy_action_head
from stamo_vla.adapter.targets import get_target, target_names
from stamo_vla.configs import check_choice, check_positive_int, check_range
from stamo_vla.fileio import read_json, write_json_atomic
from stamo_vla.provenance import Provenance

TARGETS = target_names()
TARGET_NORMS = ("dataset", "none")
READOUTS = ("action_query", "mean_vision")
LORA_TARGET_PRESETS = ("openvla-upstream", "all-linear")
# fields of older adapter configs that are no longer read here: the StaMo checkpoint path is the run's, not the
# adapter's; the provenance facts moved to provenance.json (`stamo_vla.provenance` reads them from old configs)
REMOVED_FIELDS = ("stamo_path", *Provenance.fields())
CONFIG_NAME = "stamo_adapter_config.json"
# The shape of one target (N tokens x D dims; a StaMo state is 2 x 1024) is fixed by the target encoder or the
# target cache, never chosen: `attach` reads it from them, and the adapter's saved configuration records it beside
# the config's fields (`save`, `saved_target_shape`). Configs written before it was derived held it as fields.
TARGET_SHAPE_FIELDS = ("num_state_tokens", "state_dim")


@dataclass
class StaMoAdapterConfig:
    """Configuration of the StaMo auxiliary head and the LoRA adapter it trains with.

    The defaults follow the paper (lambda_action = lambda_future, future loss = MSE + L1) and upstream OpenVLA's
    LoRA recipe (r=32, alpha=min(r, 16), dropout 0, gaussian init). What an adapter was trained from (encoder
    fingerprint, base-model signature, image augmentation) is not configured: it is recorded in
    ``provenance.json`` beside this config (`stamo_vla.provenance`). Nor is the target's shape: the target encoder
    or cache fixes it, and the saved configuration records it (`TARGET_SHAPE_FIELDS`).
    """

    # What the head predicts (`stamo_vla.adapter.targets`): "state" = StaMo state s_{t+h}; "motion" = s_{t+h} - s_t;
    # "features" = the frozen policy vision backbone's patch features of frame t+h, average-pooled per tower to a
    # feature_grid x feature_grid map (the paper's DINOv2-feature control); "untrained" = the state of frame t+h
    # from the StaMo encoder architecture with random compressor weights drawn from target_seed (a control: is any
    # compact target enough?); "none" = plain LoRA baseline (no head).
    target: str = "motion"
    # How targets are scaled before the loss: "dataset" = per-dimension (x - mean) / std with the mean and std of
    # the target over the training data (from the target cache, or estimated from the first batches when targets
    # are computed on the fly), stored with the head, so one lambda_future means the same pull for every target;
    # the head predicts standardized targets and un-standardizes its outputs. "none" = raw targets (adapters
    # saved before standardization load with their head's mean 0 / std 1, i.e. raw).
    target_norm: str = "dataset"
    # Seed of the random compressor weights of target="untrained" (recorded in the target cache manifest through
    # the encoder fingerprint; every run with the same seed regresses the same random target).
    target_seed: int = 0
    # target="features": side of the grid the backbone's patch features are average-pooled to (1 = one pooled
    # vector per tower; the paper's row uses the dense map, 2 keeps its spatial layout at 4 tokens).
    feature_grid: int = 2
    # Horizon h in environment steps between the current frame and the future frame (1 = next step).
    horizon: int = 1
    # Where the head reads the backbone: "action_query" = last-layer hidden state at the position that predicts
    # the first action token (free at inference: it is part of the prompt pass); "mean_vision" = mean over the
    # last-layer hidden states of the vision tokens.
    readout: str = "action_query"
    # Number of linear layers in the head MLP (>= 1; 1 = a single linear map after LayerNorm).
    head_depth: int = 2
    # Width of the head's hidden layers.
    head_width: int = 1024
    # Weight of the action loss (token cross-entropy, or L1 for the continuous head).
    lambda_action: float = 1.0
    # Weight of the future loss (MSE + L1 between predicted and target state / motion).
    lambda_future: float = 1.0
    # Weight of the optional decoder loss: flow-matching loss of the frozen StaMo DiT decoder conditioned on the
    # predicted future state (0 = off). Needs a StaMo checkpoint with a decoder.
    lambda_decoder: float = 0.0
    # LoRA rank.
    lora_rank: int = 32
    # LoRA alpha; None means upstream's min(rank, 16).
    lora_alpha: int | None = None
    # LoRA dropout (upstream: 0.0).
    lora_dropout: float = 0.0
    # LoRA init: "gaussian" (upstream) or "default" (peft's Kaiming-uniform A, zero B).
    lora_init: str = "gaussian"
    # Which modules get LoRA. "openvla-upstream" reproduces what upstream's `target_modules="all-linear"` wrapped
    # under peft 0.11: every nn.Linear *including lm_head*, plus the ViT patch-embedding convolutions named `*.proj`.
    # "all-linear" is today's peft meaning (every nn.Linear except the output layer). A list of module-name
    # suffixes is used as given.
    lora_target_modules: str | list[str] = "openvla-upstream"
    # How actions are produced: type tokens (OpenVLA: 7 autoregressive action tokens, cross-entropy) | l1
    # (OpenVLA-OFT: K x 7 empty action positions decoded in one bidirectional pass, MLP-ResNet L1 regression head;
    # its fields: action_chunk, action_dim, width, num_images, use_proprio, proprio_dim, use_film).
    action_head: ActionHeadConfig = field(default_factory=TokenActionHead)

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        check_choice("target_norm", self.target_norm, TARGET_NORMS)
        check_choice("readout", self.readout, READOUTS)
        check_choice("lora_init", self.lora_init, ("gaussian", "default"))
        if isinstance(self.lora_target_modules, str):
            check_choice("lora_target_modules", self.lora_target_modules, LORA_TARGET_PRESETS)
        elif not self.lora_target_modules:
            raise ValueError("lora_target_modules=[] is empty; give a preset name or module-name suffixes")
        if self.target_seed < 0:
            raise ValueError(f"target_seed={self.target_seed!r} must be >= 0")
        for name in (
            "horizon",
            "head_depth",
            "head_width",
            "lora_rank",
            "feature_grid",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("lambda_action", "lambda_future", "lambda_decoder"):
            check_range(name, getattr(self, name), low=0)
        check_range("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha={self.lora_alpha!r} must be positive (or None for min(rank, 16))")
        if self.lambda_decoder > 0 and not get_target(self.target).in_state_space:
            raise ValueError(
                f"lambda_decoder > 0 decodes predicted StaMo states; target={self.target!r} does not predict them: "
                "set target to 'state' or 'motion'"
            )

    @property
    def target_spec(self):
        """The registered `stamo_vla.adapter.targets.TargetSpec` of `target`."""
        return get_target(self.target)

    @property
    def has_head(self) -> bool:
        return self.target_spec.has_head

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else min(self.lora_rank, 16)

    def to_dict(self) -> dict:
        """The config as saved (JSON-able; the action head as ``{"type": ..., <its fields>}``)."""
        return draccus.encode(self)

    @classmethod
    def from_dict(cls, data: dict) -> StaMoAdapterConfig:
        """A config from `to_dict`'s output, or from an adapter config saved before the action head was a
        registered choice (flat ``action_head: l1``, ``action_chunk``, ``num_images``, ...) or before provenance
        had its own file (its facts are skipped here; `stamo_vla.provenance.read_provenance` reads them). The
        recorded target shape is skipped too (`saved_target_shape` reads it)."""
        data = upgrade_legacy_action_head(data)
        data = {k: v for k, v in data.items() if k not in (*REMOVED_FIELDS, *TARGET_SHAPE_FIELDS)}
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"adapter config has unknown fields {unknown}; was it written by a newer stamo_vla?"
            )
        try:
            return draccus.decode(cls, data)
        except (
            Exception
        ) as err:  # draccus wraps a field's own validation error: surface the message naming it
            cause = err
            while cause is not None and not isinstance(cause, ValueError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise ValueError(str(cause)) from err

    def save(self, directory: str | Path, target_shape: tuple[int, int] | None = None) -> None:
        """Write ``<directory>/stamo_adapter_config.json``: the fields, and the head's `target_shape`
        ((num_state_tokens, state_dim), fixed by the target encoder or cache) when the adapter has a head."""
        shape = dict(zip(TARGET_SHAPE_FIELDS, map(int, target_shape))) if target_shape is not None else {}
        write_json_atomic(Path(directory) / CONFIG_NAME, {**self.to_dict(), **shape})

    @classmethod
    def load(cls, directory: str | Path) -> StaMoAdapterConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a StaMo adapter directory: {CONFIG_NAME} is missing. "
                "Pass the directory written by `save_adapter` (it also holds adapter_config.json)."
            )
        data = read_json(path, "Save the adapter again, or copy the file from the run that wrote it.")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def saved_target_shape(directory: str | Path) -> tuple[int, int] | None:
    """The target shape (num_state_tokens, state_dim) an adapter directory's configuration records (None when it
    records none: an adapter without a head).

    Raises:
        ValueError: a recorded value is not a positive integer (names the file and the field).
    """
    path = Path(directory) / CONFIG_NAME
    data = read_json(path, "Save the adapter again, or copy the file from the run that wrote it.")
    if not all(name in data for name in TARGET_SHAPE_FIELDS):
        return None
    for name in TARGET_SHAPE_FIELDS:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"{path}: field '{name}' is {value!r}; expected a positive integer (the target's shape, recorded "
                "when the adapter was saved). Copy the file again from the run that wrote it."
            )
    return int(data["num_state_tokens"]), int(data["state_dim"])
