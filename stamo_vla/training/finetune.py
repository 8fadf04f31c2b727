"""LoRA + StaMo-head fine-tuning of an OpenVLA checkpoint: setup -> loop (`stamo_vla.training.loop`) -> save.

Run through ``stamo-vla finetune`` (``torchrun --nproc-per-node K -m stamo_vla.cli finetune`` on several devices;
``recipes/finetune_libero.py`` is the same command). Every rank
reads its own shard of the data; rank 0 logs and writes checkpoints; merging the adapter into the base is a
separate offline command (``stamo-vla merge``), never done on every rank.

When things go wrong: ``resume=true`` continues from the newest checkpoint that reads back intact (a damaged
newer one is named in a warning); SIGTERM finishes the current step, saves a checkpoint and exits with code
143; a resumed config may not change the model the checkpoint holds, and every other change is recorded
(`stamo_vla.training.resume_config`); a run whose first steps hold no supervised action token and no StaMo
target stops with an error instead of logging loss 0.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stamo_vla.adapter import attach, load_adapter, save_adapter
from stamo_vla.adapter.target_encoders import build_target_encoder
from stamo_vla.configs import parse_config, save_config
from stamo_vla.data.dataset import make_dataloader
from stamo_vla.data.target_cache import StaleTargetCacheError, read_manifest, target_facts, target_statistics
from stamo_vla.fileio import read_jsonl, write_json_atomic, writes_directory
from stamo_vla.provenance import read_provenance
from stamo_vla.stamo import StaMoAutoencoder, StaMoEncoder
from stamo_vla.training import resume_config
from stamo_vla.training.checkpoint import optimization_state
from stamo_vla.training.distributed import seed_everything, setup_accelerator
from stamo_vla.training.finetune_config import FinetuneConfig
from stamo_vla.training.logger import TrainLogger
from stamo_vla.training.loop import Hooks, Training, loader_batches, resume_point, to_device, train_loop
from stamo_vla.training.supervision import SUPERVISION, FinetuneCollator, SupervisionCheck
from stamo_vla.vla import ActionTokenizer, OpenVLAForActionPrediction, OpenVLAProcessor, build_tiny
from stamo_vla.vla.loading import load_vla

logger = logging.getLogger(__name__)

BASE_MODEL_DIR = "base_model"
ADAPTER_DIR = "adapter"
STATISTICS_BATCHES = 16  # batches that estimate the target statistics when targets are computed on the fly


# ---------------------------------------------------------------------------------------------- model
def load_base(cfg: FinetuneConfig, run_dir: Path, accelerator) -> tuple[Any, Any]:
    """The frozen base VLA and its processor, from a checkpoint directory or the embedded tiny preset.

    Args:
        cfg: the fine-tuning configuration.
        run_dir: the run directory.
        accelerator: the run's accelerator (device and precision).
    """
    path = cfg.vla_path
    if path == "tiny":
        path = str(run_dir / BASE_MODEL_DIR)
        if accelerator.is_main_process and not (Path(path) / "config.json").is_file():
            build_tiny(save_dir=path, seed=cfg.seed)
        accelerator.wait_for_everyone()
    bf16 = not cfg.load_in_4bit and torch.cuda.is_available() and cfg.mixed_precision != "no"
    model = load_vla(
        OpenVLAForActionPrediction,
        path,
        device=accelerator.device,
        dtype=torch.bfloat16 if bf16 else None,  # upstream loads the base in bf16
        quantization="qlora" if cfg.load_in_4bit else "none",  # NF4 + bf16 compute, as upstream
        attn_implementation=cfg.attn_implementation,
    )
    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    return model, OpenVLAProcessor.from_pretrained(path)


def load_stamo(cfg: FinetuneConfig, device) -> tuple[Any, Any]:
    """(frozen encoder, frozen decoder or None) from cfg.stamo_path; (None, None) without one."""
    if not cfg.stamo_path:
        return None, None

    if cfg.adapter.lambda_decoder > 0:
        auto = StaMoAutoencoder.from_pretrained(cfg.stamo_path)
        return auto.encoder.to(device).eval(), auto.decoder.to(device).eval()
    return StaMoEncoder.from_pretrained(cfg.stamo_path).to(device).eval(), None


def _cache_manifests(cfg: FinetuneConfig) -> list[dict]:
    """Every dataset's target-cache manifest, refused when it was built for another target (its per-frame kind)."""
    expected = cfg.adapter.target_spec.frames
    manifests = []
    for name in cfg.data.dataset_names:
        cache_dir = Path(cfg.data.target_cache_dir(name))
        if not (cache_dir / "manifest.json").is_file():
            raise FileNotFoundError(
                f"data.use_target_cache=true but there is no cache at {cache_dir}; build it with "
                f"`stamo-vla cache-targets --target {cfg.adapter.target}` (or compute targets on the fly)."
            )
        manifest = read_manifest(cache_dir)
        if manifest["target_kind"] != expected:
            raise StaleTargetCacheError(
                f"target cache {cache_dir} holds {manifest['target_kind']!r} frames, but adapter.target="
                f"{cfg.adapter.target!r} is made of {expected!r} frames. Build its own cache with `stamo-vla "
                f"cache-targets --target {cfg.adapter.target} --output_dir <dir>` and point "
                "data.target_cache_root at it."
            )
        manifests.append(manifest)
    return manifests


def cache_target_shape(cfg: FinetuneConfig) -> tuple[int, int]:
    """The target shape (num_state_tokens, state_dim) the first target cache's manifest records: without an
    encoder, it fixes the head's shape (recorded with the adapter, never in the run's config)."""
    manifest = _cache_manifests(cfg)[0]
    return int(manifest["num_state_tokens"]), int(manifest["state_dim"])


def target_encoder(cfg: FinetuneConfig, stamo_encoder, base, processor) -> tuple[Any, str | None]:
    """(the target's frozen per-frame encoder or None, the encoder fingerprint every target cache must have).

    Built before LoRA is attached (target features copies the base's vision backbone). Without an encoder (a
    StaMo target and no stamo_path) the fingerprint comes from the first cache (the head's shape too:
    `cache_target_shape`). Caches of
    another target are refused.

    Args:
        cfg: the fine-tuning configuration.
        stamo_encoder: the StaMo encoder (None: no stamo_path).
        base: the frozen base VLA.
        processor: its processor.
    """
    encoder = None
    if cfg.adapter.has_head and (stamo_encoder is not None or not cfg.adapter.target_spec.needs_stamo):
        encoder = build_target_encoder(cfg.adapter, stamo_encoder, base, processor)
    if not (cfg.data.use_target_cache and cfg.adapter.has_head):
        return encoder, None  # None = any cache
    if encoder is None:
        return None, _cache_manifests(cfg)[0]["encoder_fingerprint"]
    _cache_manifests(cfg)
    return encoder, target_facts(encoder)["encoder_fingerprint"]


def fit_target_statistics(cfg: FinetuneConfig, model, loader, accelerator) -> None:
    """Set the head's target standardization (``adapter.target_norm='dataset'``): per-dimension mean and std over
    every cached frame of the training datasets, or, with targets computed on the fly, over the first
    `STATISTICS_BATCHES` batches of the training stream (summed over ranks).

    Args:
        cfg: the fine-tuning configuration.
        model: the adapter model whose head is standardized.
        loader: the training DataLoader.
        accelerator: the run's accelerator (the sums are reduced over its ranks).
    """
    if model.head is None or cfg.adapter.target_norm != "dataset":
        return
    spec = cfg.adapter.target_spec
    if cfg.data.use_target_cache:
        dirs = [cfg.data.target_cache_dir(name) for name in cfg.data.dataset_names]
        stats = target_statistics(dirs, cfg.adapter.horizon, spec.difference)
        model.head.set_target_statistics(stats["mean"], stats["std"])
        return
    moments = None
    for i, batch in enumerate(loader):
        if i == STATISTICS_BATCHES:
            break
        batch.pop(SUPERVISION, None)
        target = model.targets(to_device(batch, accelerator.device)).double()
        found = torch.stack([target.sum(0), (target**2).sum(0), torch.full_like(target[0], len(target))])
        moments = found if moments is None else moments + found
    if moments is None:  # no data: the training loop names the problem
        return
    if accelerator.num_processes > 1:
        moments = accelerator.reduce(moments, reduction="sum")
    mean = moments[0] / moments[2]
    std = (moments[1] / moments[2] - mean**2).clamp_min(0).sqrt()
    model.head.set_target_statistics(mean.float(), std.float())


def build_model(
    cfg: FinetuneConfig,
    base,
    encoder,
    decoder,
    resume_from: Path | None,
    stamo_fingerprint: str | None = None,
):
    """Attach a fresh adapter, or load the one saved in a checkpoint (trainable, with its provenance) to resume.

    `stamo_fingerprint`: the encoder of the target caches, recorded when no encoder is loaded.

    Args:
        cfg: the fine-tuning configuration.
        base: the frozen base VLA.
        encoder: the target's frozen per-frame encoder, or None.
        decoder: the StaMo decoder that renders predicted future frames, or None.
        resume_from: the checkpoint to resume, or None for a fresh adapter.
        stamo_fingerprint: the encoder of the target caches, recorded when no encoder is loaded.
    """
    if resume_from is not None:
        model = load_adapter(base, resume_from / "model", is_trainable=True)
        model.set_stamo(encoder, decoder)
        return model
    provenance = dataclasses.replace(cfg.provenance(), stamo_fingerprint=stamo_fingerprint)
    from_cache = encoder is None and cfg.adapter.has_head and cfg.data.use_target_cache
    return attach(
        base,
        cfg.adapter,
        stamo_encoder=encoder,
        stamo_decoder=decoder,
        provenance=provenance,
        seed=cfg.seed,
        target_shape=cache_target_shape(cfg) if from_cache else None,
    )


# ----------------------------------------------------------------------------------------------- data
def build_dataloader(
    cfg: FinetuneConfig,
    base,
    processor,
    live_targets: bool,
    rank: int,
    world_size: int,
    encoder_fingerprint: str | None = None,
):
    """The rank's sample stream (its own shard) and a DataLoader that yields model batches.

    `encoder_fingerprint`: the StaMo encoder every target cache must have been built with (None = any).

    Args:
        cfg: the fine-tuning configuration.
        base: the base VLA (its action tokenizer and image size).
        processor: its processor.
        live_targets: targets are computed on the fly from a future frame (no cache).
        rank: this process's rank.
        world_size: the number of ranks.
        encoder_fingerprint: the StaMo encoder every target cache must have been built with (None = any).
    """
    dataset = cfg.data.build(rank=rank, world_size=world_size, encoder_fingerprint=encoder_fingerprint)
    action_tokenizer = ActionTokenizer(base.action_vocab_size, bins=base.config.n_action_bins)
    transform = cfg.adapter.action_head.batch_transform(processor, action_tokenizer)
    collate = FinetuneCollator(
        transform, stamo_pixels=live_targets, has_head=cfg.adapter.has_head, horizon=cfg.adapter.horizon
    )
    loader = make_dataloader(dataset, cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate)
    return dataset, loader


# ------------------------------------------------------------------------------------------------ run
@dataclass
class FinetuneResult:
    run_dir: Path
    adapter_dir: Path
    step: int
    last_metrics: dict


def _prepare_resume(cfg: FinetuneConfig, run_dir: Path, resume_from: Path, state, main: bool) -> None:
    """Check the resumed config against the checkpoint and record what changed (rank 0). The optimizer and
    schedule already follow the current config (`load_checkpoint` applies it)."""
    resume_config.reconcile(cfg.to_dict(), run_dir, resume_from, state.step, write=main)


@writes_directory("finetune", "run_dir", FinetuneConfig.run_path, FinetuneConfig.input_paths)
def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train; returns where the run and its final adapter are.

    Raises:
        TrainingInterrupted: after SIGTERM, once the checkpoint of the current step is written.
        DirectoryLockedError: another process is writing the run directory.
    """
    accelerator = setup_accelerator(cfg.mixed_precision, find_unused_parameters=True)
    run_dir = cfg.run_path()
    resume_from = resume_point(cfg, run_dir, accelerator.is_main_process)
    seed_everything(cfg.seed)
    model, dataset, loader = _build(cfg, run_dir, resume_from, accelerator)
    stats = dataset.dataset_statistics

    optimizer, scheduler, state = optimization_state(
        model.trainable_parameters(), cfg.optim, cfg.max_steps, resume_from, accelerator
    )
    if resume_from is not None:
        main = accelerator.is_main_process
        _prepare_resume(cfg, run_dir, resume_from, state, main)
    accelerator.wait_for_everyone()  # every rank has read the previous config.yaml before it is replaced
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "dataset_statistics.json", stats)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    training = Training(ddp_model, optimizer, scheduler, state)
    check = SupervisionCheck(cfg.max_steps, cfg.adapter.has_head, cfg.adapter.horizon)
    with TrainLogger(
        run_dir, cfg.max_steps, state.step, accelerator.is_main_process, cfg.wandb_project, cfg.to_dict()
    ) as log:
        stream = loader_batches(cfg, dataset, loader, state)
        metrics = train_loop(cfg, run_dir, training, stream, accelerator, log, Hooks(inspect=check))
    adapter_dir = run_dir / ADAPTER_DIR
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(ddp_model)
        save_adapter(unwrapped, adapter_dir, dataset_statistics=stats, overwrite=True)  # this run's own
        write_json_atomic(run_dir / "final_metrics.json", {"step": state.step, **metrics})
    accelerator.wait_for_everyone()
    return FinetuneResult(run_dir, adapter_dir, state.step, metrics)


def _build(cfg: FinetuneConfig, run_dir: Path, resume_from: Path | None, accelerator):
    """(the model to train, its dataset, its DataLoader): the base with a fresh adapter (its target statistics
    fitted) or the checkpoint's adapter, after the resumed config is checked against the checkpoint."""
    base, processor = load_base(cfg, run_dir, accelerator)
    stamo_encoder, decoder = load_stamo(cfg, accelerator.device)
    encoder, cache_fingerprint = target_encoder(cfg, stamo_encoder, base, processor)
    if resume_from is not None:  # before the model is loaded: a changed model is refused, not trained
        facts = target_facts(encoder) if encoder is not None else {}
        targets = cache_fingerprint or facts.get("encoder_fingerprint")
        resume_config.check_fixed(
            cfg.to_dict(),
            resume_config.checkpoint_adapter_config(resume_from),
            None,
            resume_from,
            read_provenance(resume_from / "model"),
            stamo_fingerprint=targets,
        )
    model = build_model(cfg, base, encoder, decoder, resume_from, cache_fingerprint)
    live_targets = model.config.has_head and not cfg.data.use_target_cache
    dataset, loader = build_dataloader(
        cfg,
        base,
        processor,
        live_targets,
        accelerator.process_index,
        accelerator.num_processes,
        cache_fingerprint,
    )
    stats = dataset.dataset_statistics
    base.norm_stats = stats
    if resume_from is None:  # a resumed head keeps the statistics it was trained with
        fit_target_statistics(cfg, model, loader, accelerator)
    return model, dataset, loader


def load_metrics(run_dir: str | Path) -> list[dict]:
    """The run's logged metrics (``metrics.jsonl``), one dict per logged step."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla finetune``: parse a `FinetuneConfig` (``--config`` picks ``finetune_<name>.yaml``) and train."""
    cfg = parse_config(FinetuneConfig, sys.argv[1:] if argv is None else argv, prefix="finetune_")
    result = finetune(cfg)
    print(f"adapter written to {result.adapter_dir} after {result.step} steps")
    return 0
