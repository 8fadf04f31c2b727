"""LoRA + StaMo-head fine-tuning of an OpenVLA checkpoint: setup -> loop -> save.

Run through ``recipes/finetune_libero.py`` (plain ``python`` or ``torchrun --nproc-per-node K``). Every rank
reads its own shard of the data; rank 0 logs and writes checkpoints; merging the adapter into the base is a
separate offline command (``stamo-vla merge``), never done on every rank.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stamo_vla import keys as K
from stamo_vla.training.finetune_config import FinetuneConfig

logger = logging.getLogger(__name__)

BASE_MODEL_DIR = "base_model"
ADAPTER_DIR = "adapter"


# ---------------------------------------------------------------------------------------------- model
def load_base(cfg: FinetuneConfig, run_dir: Path, accelerator) -> tuple[Any, Any]:
    """The frozen base VLA and its processor, from a checkpoint directory or the embedded tiny preset."""
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor, build_tiny

    path = cfg.vla_path
    if path == "tiny":
        path = str(run_dir / BASE_MODEL_DIR)
        if accelerator.is_main_process and not (Path(path) / "config.json").is_file():
            build_tiny(save_dir=path, seed=cfg.seed)
        accelerator.wait_for_everyone()
    kwargs: dict[str, Any] = {"attn_implementation": cfg.attn_implementation}
    if cfg.load_in_4bit:
        kwargs.update(load_in_4bit=True, device_map={"": str(accelerator.device)})
    elif torch.cuda.is_available() and cfg.mixed_precision != "no":
        kwargs["dtype"] = torch.bfloat16  # upstream loads the base in bf16
    model = OpenVLAForActionPrediction.from_pretrained(path, **kwargs)
    if not cfg.load_in_4bit:
        model = model.to(accelerator.device)
    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    return model, OpenVLAProcessor.from_pretrained(path)


def load_stamo(cfg: FinetuneConfig, device) -> tuple[Any, Any]:
    """(frozen encoder, frozen decoder or None) from cfg.stamo_path; (None, None) without one."""
    if not cfg.stamo_path:
        return None, None
    from stamo_vla.stamo import StaMoAutoencoder, StaMoEncoder

    if cfg.adapter.lambda_decoder > 0:
        auto = StaMoAutoencoder.from_pretrained(cfg.stamo_path)
        return auto.encoder.to(device).eval(), auto.decoder.to(device).eval()
    return StaMoEncoder.from_pretrained(cfg.stamo_path).to(device).eval(), None


def _adopt_cache_shape(cfg: FinetuneConfig) -> None:
    """Without an encoder, the head's state shape and the encoder fingerprint come from the target cache."""
    manifest_path = Path(cfg.data.target_cache_dir(cfg.data.dataset_names[0])) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"data.use_target_cache=true but there is no cache at {manifest_path.parent}; build it with "
            "`stamo-vla cache-targets` (or set stamo_path to compute targets on the fly)."
        )
    manifest = json.loads(manifest_path.read_text())
    cfg.adapter.num_state_tokens = int(manifest["num_state_tokens"])
    cfg.adapter.state_dim = int(manifest["state_dim"])
    cfg.adapter.stamo_fingerprint = manifest["encoder_fingerprint"]
    if cfg.data.target_encoder_fingerprint is None:
        cfg.data.target_encoder_fingerprint = manifest[
            "encoder_fingerprint"
        ]  # every dataset: the same encoder


def build_model(cfg: FinetuneConfig, base, encoder, decoder, resume_from: Path | None):
    """Attach a fresh adapter, or load the one saved in a checkpoint (trainable) to resume."""
    from stamo_vla.adapter import attach, load_adapter

    if resume_from is not None:
        model = load_adapter(base, resume_from / "model", is_trainable=True)
        model.set_stamo(encoder, decoder)
        return model
    return attach(base, cfg.adapter, stamo_encoder=encoder, stamo_decoder=decoder)


# ----------------------------------------------------------------------------------------------- data
class FinetuneCollator:
    """Samples -> model batch: the policy's batch transform, plus StaMo pixels when targets are computed live.

    Args:
        batch_transform: an `OpenVLABatchTransform`.
        stamo_pixels: add STAMO_PIXELS / FUTURE_STAMO_PIXELS ((B, 3, S, S) float in [0, 1]) from IMAGE /
            FUTURE_IMAGE for the frozen encoder (the target cache makes this unnecessary).
    """

    def __init__(self, batch_transform, stamo_pixels: bool):
        self.batch_transform = batch_transform
        self.stamo_pixels = stamo_pixels

    @staticmethod
    def _pixels(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0

    def __call__(self, samples: list[dict]) -> dict:
        items = []
        for sample in samples:
            extra = {}
            if self.stamo_pixels:
                extra = {
                    K.STAMO_PIXELS: self._pixels(sample[K.IMAGE]),
                    K.FUTURE_STAMO_PIXELS: self._pixels(sample[K.FUTURE_IMAGE]),
                }
            sample = {k: v for k, v in sample.items() if k != K.FUTURE_IMAGE}
            items.append({**self.batch_transform(sample), **extra})
        return self.batch_transform.collate(items)


def build_dataloader(cfg: FinetuneConfig, base, processor, live_targets: bool, rank: int, world_size: int):
    """The rank's sample stream (its own shard) and a DataLoader that yields model batches."""
    from stamo_vla.data.dataset import make_dataloader
    from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform

    dataset = cfg.data.build(rank=rank, world_size=world_size)
    action_tokenizer = ActionTokenizer(base.action_vocab_size, bins=base.config.n_action_bins)
    if cfg.adapter.is_oft:
        from stamo_vla.vla.oft_batch_transform import OFTBatchTransform

        a = cfg.adapter
        transform = OFTBatchTransform(
            processor, action_tokenizer, a.action_chunk, a.num_images, a.use_proprio, a.proprio_dim
        )
    else:
        transform = OpenVLABatchTransform(processor, action_tokenizer)
    collate = FinetuneCollator(transform, stamo_pixels=live_targets)
    loader = make_dataloader(dataset, cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate)
    return dataset, loader


def to_device(batch: dict, device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


# ----------------------------------------------------------------------------------------------- loop
def optimizer_step(
    model, micro_batches: list[dict], optimizer, scheduler, accelerator, max_grad_norm
) -> dict:
    """One optimizer step over `micro_batches` (gradient accumulation); metrics averaged over them."""
    model.train()
    totals: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if not sync else _nullcontext(), accelerator.autocast():
            loss, metrics = model(batch)
        accelerator.backward(loss / len(micro_batches))
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v / len(micro_batches)
    if max_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        totals["grad_norm"] = float(accelerator.clip_grad_norm_(params, max_grad_norm))
    totals["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@dataclass
class FinetuneResult:
    run_dir: Path
    adapter_dir: Path
    step: int
    last_metrics: dict


def _run_dir(cfg: FinetuneConfig) -> Path:
    return Path(cfg.run_root_dir) / (cfg.run_id or cfg.default_run_id)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train; returns where the run and its final adapter are."""
    from stamo_vla.adapter import save_adapter
    from stamo_vla.configs import save_config
    from stamo_vla.fileio import write_json_atomic
    from stamo_vla.training.checkpoint import (
        TrainerState,
        find_latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from stamo_vla.training.distributed import seed_everything, setup_accelerator
    from stamo_vla.training.logger import TrainLogger
    from stamo_vla.training.optim import build_optimizer, build_scheduler

    accelerator = setup_accelerator(cfg.mixed_precision, find_unused_parameters=True)
    run_dir = _run_dir(cfg)
    resume_from = find_latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None and accelerator.is_main_process:
        logger.warning("resume=true but %s has no checkpoint; starting from scratch", run_dir)
    seed_everything(cfg.seed)

    base, processor = load_base(cfg, run_dir, accelerator)
    encoder, decoder = load_stamo(cfg, accelerator.device)
    if encoder is not None and cfg.data.use_target_cache and cfg.data.target_encoder_fingerprint is None:
        from stamo_vla.stamo import fingerprint

        cfg.data.target_encoder_fingerprint = fingerprint(encoder)  # refuse caches built by another encoder
    if encoder is None and cfg.data.use_target_cache and cfg.adapter.has_head:
        _adopt_cache_shape(cfg)
    model = build_model(cfg, base, encoder, decoder, resume_from)
    live_targets = model.config.has_head and not cfg.data.use_target_cache
    dataset, loader = build_dataloader(
        cfg, base, processor, live_targets, accelerator.process_index, accelerator.num_processes
    )
    stats = dataset.dataset_statistics
    base.norm_stats = stats

    optimizer = build_optimizer(model.trainable_parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
    state = TrainerState()
    if resume_from is not None:
        state = load_checkpoint(resume_from, optimizer, scheduler, accelerator)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "dataset_statistics.json", stats)
    log = TrainLogger(
        run_dir, cfg.max_steps, state.step, accelerator.is_main_process, cfg.wandb_project, cfg.to_dict()
    )

    consumed = int(state.data_state.get("micro_batches", 0))
    if consumed:  # continue the deterministic sample stream where the run stopped, decoding nothing skipped
        dataset.set_resume_position(consumed, cfg.batch_size)
    batches = iter(loader)
    metrics: dict = {}
    while state.step < cfg.max_steps:
        micro = [to_device(next(batches), accelerator.device) for _ in range(cfg.grad_accumulation_steps)]
        consumed += len(micro)
        metrics = optimizer_step(ddp_model, micro, optimizer, scheduler, accelerator, cfg.optim.max_grad_norm)
        state.step += 1
        if state.step % cfg.log_steps == 0 or state.step == cfg.max_steps:
            log.log(state.step, metrics)
        if state.step % cfg.save_steps == 0 or state.step == cfg.max_steps:
            state.data_state = {"micro_batches": consumed}
            unwrapped = accelerator.unwrap_model(ddp_model)
            save_checkpoint(
                run_dir, state, unwrapped, optimizer, scheduler, accelerator, keep_last=cfg.keep_last
            )
    log.close()

    adapter_dir = run_dir / ADAPTER_DIR
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(ddp_model), adapter_dir, dataset_statistics=stats)
        write_json_atomic(run_dir / "final_metrics.json", {"step": state.step, **metrics})
    accelerator.wait_for_everyone()
    return FinetuneResult(run_dir, adapter_dir, state.step, metrics)


def load_metrics(run_dir: str | Path) -> list[dict]:
    """The run's logged metrics (``metrics.jsonl``), one dict per logged step."""
    path = Path(run_dir) / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
