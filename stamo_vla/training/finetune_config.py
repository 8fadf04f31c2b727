"""`FinetuneConfig`: LoRA + StaMo-head fine-tuning of an OpenVLA checkpoint on RLDS data."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from stamo_vla.adapter.action_heads import upgrade_legacy_action_head
from stamo_vla.adapter.configuration_adapter import REMOVED_FIELDS, TARGET_SHAPE_FIELDS, StaMoAdapterConfig
from stamo_vla.configs import check_choice, check_positive_int
from stamo_vla.data.config import DataConfig
from stamo_vla.provenance import Provenance
from stamo_vla.training.optim import OptimizerConfig
from stamo_vla.training.run_config import RunConfig

ATTENTION = ("sdpa", "eager", "flash_attention_2")
_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
# data fields of older configs: the encoder a target cache must match is the run's encoder (or the first cache's),
# recorded as stamo_fingerprint in the adapter's provenance.json
REMOVED_DATA_FIELDS = ("target_encoder_fingerprint",)


@dataclass
class FinetuneOptimizerConfig(OptimizerConfig):
    """Optimizer of fine-tuning; defaults = upstream finetune.py: torch AdamW (weight decay 0.01), constant lr 5e-4,
    no warm-up, no gradient clipping. (Defaults live on the class so a YAML or CLI override of one field keeps
    the others upstream's.)"""

    # Peak learning rate (upstream: 5e-4, constant).
    lr: float = 5e-4
    # Clip the global gradient norm to this value (None: no clipping, as upstream OpenVLA and OpenVLA-OFT).
    max_grad_norm: float | None = None


@dataclass
class FinetuneDataConfig(DataConfig):
    """Training data of fine-tuning; defaults = upstream's LIBERO recipe (finetune.py defaults, HF model cards)."""

    # training-time image augmentation: random crop (90% area) + colour jitter (upstream image_aug=True)
    image_aug: bool = True
    # frames held by the shuffle buffer (upstream shuffle_buffer_size=100_000; reduce it if host memory runs out)
    shuffle_buffer_size: int = 100_000


@dataclass
class FinetuneConfig(RunConfig):
    """Fine-tune an OpenVLA checkpoint with LoRA and the StaMo auxiliary loss.

    A bare ``FinetuneConfig()`` is upstream OpenVLA's LIBERO recipe (LoRA r=32 / alpha 16 / dropout 0 / gaussian
    init on upstream's modules, AdamW lr 5e-4 constant with weight decay 0.01 and no gradient clipping, batch 16
    per GPU, image augmentation, shuffle buffer 100K, train[:95%]) plus the StaMo head; ``--adapter.target none``
    drops the head and is the upstream baseline itself.

    The run fields (run_dir, resume, max_steps, save_steps, ...) are `RunConfig`'s, shared with every recipe.
    """

    # Local directory of an upstream-layout checkpoint (openvla-7b or a LIBERO fine-tune), or "tiny" to build
    # the embedded random tiny model (written to <run_dir>/base_model so the adapter can be merged/evaluated).
    vla_path: str = "openvla/openvla-7b"
    # Where the training data comes from and how samples are drawn (data.horizon follows adapter.horizon).
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    # The StaMo head (target state | motion | none, horizon, loss weights) and the LoRA settings.
    adapter: StaMoAdapterConfig = field(default_factory=StaMoAdapterConfig)
    # Optimizer and learning-rate schedule.
    optim: FinetuneOptimizerConfig = field(default_factory=FinetuneOptimizerConfig)
    # StaMo checkpoint whose frozen encoder computes targets on the fly (not needed with data.use_target_cache;
    # with a cache it is still used to check the cache's encoder fingerprint). Its decoder is needed only
    # for adapter.lambda_decoder > 0.
    stamo_path: str | None = None
    # Output folder of the run; None derives runs/<name> from the config (model, data, batch, lr, LoRA rank,
    # target).
    run_dir: str | None = None
    # Seed of model init for new heads, LoRA init, data order and augmentation.
    seed: int = 7
    # Optimizer steps to train for.
    max_steps: int = 200_000
    # Per-process batch size (upstream: 16 per GPU).
    batch_size: int = 16
    # Save a checkpoint every this many optimizer steps (0: only at the end; the last step always saves).
    save_steps: int = 5_000
    # Keep only this many newest checkpoints (upstream save_latest_checkpoint_only=True keeps 1).
    keep_last: int = 1
    # Load the base in 4-bit NF4 (QLoRA; bitsandbytes, also on CPU). Upstream warns it hurts performance.
    load_in_4bit: bool = False
    # Attention kernel of the LLM: sdpa | eager | flash_attention_2 (falls back to sdpa with a warning).
    attn_implementation: str = "sdpa"
    # Recompute activations in the backward pass to save memory.
    gradient_checkpointing: bool = False
    # DataLoader worker processes (0 = read in the training process, like upstream RLDS loading).
    num_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("attn_implementation", self.attn_implementation, ATTENTION)
        check_positive_int("num_workers", self.num_workers, allow_zero=True)
        self._resolve()
        if self.adapter.lambda_decoder > 0 and not self.stamo_path:
            raise ValueError(
                "adapter.lambda_decoder > 0 needs stamo_path (a StaMo checkpoint with a decoder)"
            )
        if self.adapter.target_spec.needs_stamo and not (self.stamo_path or self.data.use_target_cache):
            raise ValueError(
                f"adapter.target={self.adapter.target!r} needs StaMo targets: set stamo_path (targets computed on the "
                "fly by the frozen encoder) or data.use_target_cache=true (after `stamo-vla cache-targets`), or use "
                "adapter.target=none for the plain LoRA baseline."
            )

    def _resolve(self) -> None:
        """Derive the fields that follow others, in one place: the data's future-frame offset and chunk follow
        the adapter, and the data loads what the action head reads. A value the user set that disagrees with the
        one derived is an error naming both fields; a field left at its default takes the derived value."""
        head = self.adapter.action_head
        head.check_attention(self.attn_implementation)
        needs = head.data_requirements()
        derived = [
            ("data.horizon", "adapter.horizon", self.adapter.horizon),
            ("data.action_chunk", "adapter.action_head.action_chunk", needs["action_chunk"]),
        ]
        for name, source, value in derived:
            field_name = name.split(".")[1]
            current, default = getattr(self.data, field_name), _DATA_DEFAULTS[field_name]
            if current not in (value, default):
                raise ValueError(
                    f"{name}={current!r} conflicts with {source}={value!r}: {name} follows {source}; set only {source}"
                )
            setattr(self.data, field_name, value)
        self.data.load_wrist = self.data.load_wrist or needs["load_wrist"]
        self.data.load_proprio = self.data.load_proprio or needs["load_proprio"]

    def provenance(self) -> Provenance:
        """What this run records beside its adapter (provenance.json), beyond what `attach` adds (the base-model
        signature, the encoder fingerprint): whether training augmented images (evaluation center-crops exactly
        then)."""
        return Provenance(trained_with_image_aug=bool(self.data.image_aug))

    def input_paths(self) -> dict[str, str | Path | None]:
        """Everything the run reads, by option name (the run directory must lie apart from all of them)."""
        models = {
            "vla_path": None if self.vla_path == "tiny" else self.vla_path,
            "stamo_path": self.stamo_path,
        }
        return {**models, **self.data.input_paths("data.")}

    def run_path(self) -> Path:
        """``run_dir``, or ``runs/<default_run_id>`` when it is not set."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.default_run_id

    @property
    def default_run_id(self) -> str:
        name = self.vla_path.rstrip("/").split("/")[-1]
        data = "+".join(self.data.dataset_names)
        parts = [name, data, f"b{self.batch_size * self.grad_accumulation_steps}", f"lr-{self.optim.lr:g}"]
        parts += [f"lora-r{self.adapter.lora_rank}", f"stamo-{self.adapter.target}"]
        if self.adapter.has_head:
            parts.append(f"h{self.adapter.horizon}")
        if (head := self.adapter.action_head.run_name()) is not None:
            parts.append(head)
        if self.load_in_4bit:
            parts.append("q-4bit")
        if self.data.image_aug:
            parts.append("image_aug")  # upstream eval keys center_crop off this substring
        return "+".join(parts)

    def to_dict(self) -> dict:
        """The config as saved (JSON-able; registered choices as ``{"type": ..., <fields>}``)."""
        return draccus.encode(self)

    @classmethod
    def upgrade_saved(cls, data: dict, run_dir: str | Path | None = None) -> dict:
        """A saved config.yaml with old field names mapped (run fields, the adapter's flat action-head fields) and
        the provenance fields older configs held dropped (provenance.json beside the adapter records them), and
        so the target shape they held (the target encoder or cache fixes it; the adapter records it), with a
        deprecation note."""
        data = super().upgrade_saved(data, run_dir)
        if isinstance(data.get("adapter"), dict):
            data["adapter"] = _drop_derived_shape(data["adapter"], run_dir)
            data["adapter"] = {
                k: v
                for k, v in upgrade_legacy_action_head(data["adapter"]).items()
                if k not in REMOVED_FIELDS
            }
        if isinstance(data.get("data"), dict):
            data["data"] = {k: v for k, v in data["data"].items() if k not in REMOVED_DATA_FIELDS}
        return data


def _drop_derived_shape(adapter: dict, run_dir: str | Path | None) -> dict:
    """`adapter` without the target-shape fields configs saved before the shape was derived held."""
    held = [name for name in TARGET_SHAPE_FIELDS if name in adapter]
    if not held:
        return adapter
    where = f"{Path(run_dir) / 'config.yaml'}" if run_dir is not None else "the saved config"
    warnings.warn(
        f"{where} holds adapter.{', adapter.'.join(held)} ({', '.join(repr(adapter[n]) for n in held)}): these "
        "are no longer config fields, as the target encoder or the target cache fixes the target's shape (the "
        "adapter's stamo_adapter_config.json records it). They are ignored; remove them from the file.",
        FutureWarning,
        stacklevel=3,
    )
    return {k: v for k, v in adapter.items() if k not in held}
