"""`FinetuneConfig`: LoRA + StaMo-head fine-tuning of an OpenVLA checkpoint on RLDS data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.configs import check_choice
from stamo_vla.data.config import DataConfig
from stamo_vla.training.distributed import MIXED_PRECISION
from stamo_vla.training.optim import OptimizerConfig

ATTENTION = ("sdpa", "eager", "flash_attention_2")


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
class FinetuneConfig:
    """Fine-tune an OpenVLA checkpoint with LoRA and the StaMo auxiliary loss.

    A bare ``FinetuneConfig()`` is upstream OpenVLA's LIBERO recipe (LoRA r=32 / alpha 16 / dropout 0 / gaussian
    init on upstream's modules, AdamW lr 5e-4 constant with weight decay 0.01 and no gradient clipping, batch 16
    per GPU, image augmentation, shuffle buffer 100K, train[:95%]) plus the StaMo head; ``--adapter.target none``
    drops the head and is the upstream baseline itself.
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
    # Folder that holds one directory per run.
    run_root_dir: str = "runs"
    # Run directory name; None derives one from the config (model, data, batch, lr, LoRA rank, target).
    run_id: str | None = None
    # Per-process batch size (upstream: 16 per GPU).
    batch_size: int = 16
    # Micro-batches per optimizer step (effective batch = batch_size x grad_accumulation_steps x processes).
    grad_accumulation_steps: int = 1
    # Optimizer steps to train for.
    max_steps: int = 200_000
    # Save a checkpoint every this many optimizer steps (and at the end).
    save_steps: int = 5_000
    # Keep only this many newest checkpoints (upstream save_latest_checkpoint_only=True keeps 1).
    keep_last: int = 1
    # Log metrics every this many optimizer steps.
    log_steps: int = 10
    # Seed of model init for new heads, LoRA init, data order and augmentation.
    seed: int = 7
    # auto (bf16 autocast on CUDA, fp32 on CPU) | no | bf16.
    mixed_precision: str = "auto"
    # Load the base in 4-bit NF4 (QLoRA; bitsandbytes, also on CPU). Upstream warns it hurts performance.
    load_in_4bit: bool = False
    # Attention kernel of the LLM: sdpa | eager | flash_attention_2 (falls back to sdpa with a warning).
    attn_implementation: str = "sdpa"
    # Recompute activations in the backward pass to save memory.
    gradient_checkpointing: bool = False
    # DataLoader worker processes (0 = read in the training process, like upstream RLDS loading).
    num_workers: int = 0
    # Continue from the newest checkpoint in the run directory (optimizer, scheduler, RNG, data position).
    resume: bool = False
    # Log to Weights & Biases under this project (None = off).
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("attn_implementation", self.attn_implementation, ATTENTION)
        for name in (
            "batch_size",
            "grad_accumulation_steps",
            "max_steps",
            "save_steps",
            "keep_last",
            "log_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0")
        # one source of truth for the future-frame offset
        self.data.horizon = self.adapter.horizon
        # recorded in the adapter (and merged) checkpoint: evaluation center-crops exactly when training augmented
        self.adapter.trained_with_image_aug = bool(self.data.image_aug)
        if self.adapter.is_oft:
            self._sync_oft_data()
        if self.adapter.lambda_decoder > 0 and not self.stamo_path:
            raise ValueError(
                "adapter.lambda_decoder > 0 needs stamo_path (a StaMo checkpoint with a decoder)"
            )
        if self.adapter.has_head and not (self.stamo_path or self.data.use_target_cache):
            raise ValueError(
                f"adapter.target={self.adapter.target!r} needs StaMo targets: set stamo_path (targets computed on the "
                "fly by the frozen encoder) or data.use_target_cache=true (after `stamo-vla cache-targets`), or use "
                "adapter.target=none for the plain LoRA baseline."
            )

    def _sync_oft_data(self) -> None:
        """The OFT variant's inputs decide what the data loads: chunk length, wrist camera, proprio."""
        if self.attn_implementation == "flash_attention_2":
            raise ValueError(
                "attn_implementation='flash_attention_2' cannot take the 4-D parallel-decoding mask of "
                "adapter.action_head='l1'; allowed: ['sdpa', 'eager']"
            )
        self.data.action_chunk = self.adapter.action_chunk
        self.data.load_wrist = self.data.load_wrist or self.adapter.num_images == 2
        self.data.load_proprio = self.data.load_proprio or self.adapter.use_proprio

    @property
    def default_run_id(self) -> str:
        name = self.vla_path.rstrip("/").split("/")[-1]
        data = "+".join(self.data.dataset_names)
        parts = [name, data, f"b{self.batch_size * self.grad_accumulation_steps}", f"lr-{self.optim.lr:g}"]
        parts += [f"lora-r{self.adapter.lora_rank}", f"stamo-{self.adapter.target}"]
        if self.adapter.has_head:
            parts.append(f"h{self.adapter.horizon}")
        if self.adapter.is_oft:
            parts.append(f"l1-K{self.adapter.action_chunk}-img{self.adapter.num_images}")
        if self.load_in_4bit:
            parts.append("q-4bit")
        if self.data.image_aug:
            parts.append("image_aug")  # upstream eval keys center_crop off this substring
        return "+".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
