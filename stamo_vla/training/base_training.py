"""Full-parameter training of a small OpenVLA base policy, as upstream trains openvla-7b: token actions, one
camera, every weight trainable. The result is an upstream-layout checkpoint that the plugin then fine-tunes
with LoRA (with or without the StaMo head), exactly as a user fine-tunes openvla-7b.

    stamo-vla train-base --data.data_root_dir DATA --data.dataset_names '[base]' \\
        --run_dir runs/base --max_steps 3000

Resumable: ``resume=true`` (the default) continues from the newest intact checkpoint in ``run_dir``
(weights, optimizer, schedule, RNG and data position), through the loop every recipe shares
(`stamo_vla.training.loop`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from stamo_vla.adapter.action_heads import TokenActionHead
from stamo_vla.configs import check_choice, parse_config, save_config
from stamo_vla.data.config import DataConfig
from stamo_vla.data.dataset import make_dataloader
from stamo_vla.data.sources import iter_episodes
from stamo_vla.fileio import dataset_inputs, write_json_atomic, writes_directory
from stamo_vla.training.checkpoint import optimization_state
from stamo_vla.training.distributed import seed_everything, setup_accelerator
from stamo_vla.training.logger import TrainLogger
from stamo_vla.training.loop import Hooks, Training, loader_batches, resume_point, train_loop
from stamo_vla.training.optim import OptimizerConfig
from stamo_vla.training.resume_config import reconcile_run
from stamo_vla.training.run_config import RunConfig
from stamo_vla.training.supervision import FinetuneCollator, SupervisionCheck
from stamo_vla.vla import ActionTokenizer, OpenVLAForActionPrediction, OpenVLAProcessor, build_tiny, tiny
from stamo_vla.vla.loading import save_checkpoint as save_vla

logger = logging.getLogger(__name__)

# registered model sizes: name -> factory in stamo_vla.vla.tiny
MODEL_PRESETS = ("tiny", "small", "mid")
MODEL_DIR = "model"
PROCESSOR_DIR = "processor"
# what a checkpoint fixes: its architecture and action tokens, its input size, its data and tokenizer merges
RESUME_FIXED = ("model", "data.format", "data.dataset_names", "data.image_size", "tokenizer_datasets")


def _base_optim() -> OptimizerConfig:
    return OptimizerConfig(
        lr=1e-3, weight_decay=0.01, warmup_steps=100, decay="cosine", min_lr_ratio=0.05, max_grad_norm=None
    )


@dataclass
class BaseTrainConfig(RunConfig):
    """Train a random-init OpenVLA-architecture policy from scratch on RLDS data (token actions).

    The run fields (run_dir, resume, max_steps, save_steps, ...) are `RunConfig`'s, shared with every recipe.
    """

    # Model size from `stamo_vla.vla.tiny`: tiny (0.3M, 224 px) | small (5M, 112 px) | mid (5.5M, 224 px).
    model: str = "small"
    # The training data; data.image_size must equal the model's input size (112 for small). Frames are decoded
    # once and kept (up to 1 GiB), which changes no result.
    data: DataConfig = field(
        default_factory=lambda: DataConfig(image_size=112, train_percent=100, frame_cache_mb=1024)
    )
    # Optimizer and schedule (linear warm-up, cosine decay, no gradient clipping).
    optim: OptimizerConfig = field(default_factory=_base_optim)
    # More datasets (in data.data_root_dir) whose instructions the tokenizer's BPE merges are learned on, besides
    # the training datasets' (words only: no frames or actions of these datasets are read).
    tokenizer_datasets: list[str] = field(default_factory=list)
    # Output folder: checkpoints/, metrics.jsonl and, at the end, model/ (upstream checkpoint layout).
    run_dir: str | None = "runs/base"
    # Samples per micro-batch.
    batch_size: int = 32
    # Optimizer steps.
    max_steps: int = 3000
    # Save a resumable checkpoint every this many steps (0: only at the end; the last step always saves).
    save_steps: int = 500
    # Keep only this many newest checkpoints.
    keep_last: int = 2
    # Log metrics every this many steps.
    log_steps: int = 25
    # no | auto (bf16 autocast on CUDA) | bf16. "no": the small models train in float32 everywhere.
    mixed_precision: str = "no"

    def input_paths(self) -> dict:
        """The datasets read, by option name (the run directory must lie apart from them)."""
        tokenizer_data = dataset_inputs(
            "tokenizer_datasets", self.data.data_root_dir, self.tokenizer_datasets
        )
        return {**self.data.input_paths("data."), **tokenizer_data}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("model", self.model, MODEL_PRESETS)
        size = 112 if self.model == "small" else 224
        if self.data.image_size != size:
            raise ValueError(
                f"data.image_size={self.data.image_size} does not match model={self.model!r}, which takes {size} px "
                f"images; set --data.image_size {size}"
            )


def model_config(name: str, norm_stats: dict | None = None):
    """The OpenVLA config of a registered model size."""
    factory = {"tiny": tiny.tiny_config, "small": tiny.small_config, "mid": tiny.mid_config}[name]
    return factory(norm_stats=norm_stats) if norm_stats else factory()


class FullTraining(nn.Module):
    """Every weight of the VLA trains; ``forward(batch) -> (loss, metrics)`` is the token loss upstream uses."""

    def __init__(self, vla: nn.Module):
        super().__init__()
        self.vla = vla.requires_grad_(True)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics, _ = self.vla.compute_loss(batch)
        return loss, metrics

    def save_pretrained(self, directory: str | Path) -> None:
        self.vla.save_pretrained(directory)


def _dataloader(cfg: BaseTrainConfig, vla, processor, rank: int, world_size: int):
    dataset = cfg.data.build(rank=rank, world_size=world_size)
    tokenizer = ActionTokenizer(vla.action_vocab_size, bins=vla.config.n_action_bins)
    collate = FinetuneCollator(TokenActionHead().batch_transform(processor, tokenizer), stamo_pixels=False)
    return dataset, make_dataloader(dataset, cfg.batch_size, num_workers=0, collate_fn=collate)


def instructions(data_root_dir: str, dataset_names: list[str]) -> list[str]:
    """The distinct task instructions of RLDS datasets, in first-seen order (no frames are read)."""
    seen: dict[str, None] = {}
    for name in dataset_names:
        for episode in iter_episodes(data_root_dir, name, load_images=False):
            seen.setdefault(episode["language_instruction"], None)
    return list(seen)


def _load_or_build(cfg: BaseTrainConfig, run_dir: Path, resume_from: Path | None):
    """Random init from the preset (tokenizer merges learned on the instructions), or the run being resumed."""
    if resume_from is not None:
        vla = OpenVLAForActionPrediction.from_pretrained(resume_from / MODEL_DIR)
        return vla, OpenVLAProcessor.from_pretrained(run_dir / PROCESSOR_DIR)
    names = list(dict.fromkeys([*cfg.data.dataset_names, *cfg.tokenizer_datasets]))
    texts = instructions(cfg.data.data_root_dir, names)
    return build_tiny(config=model_config(cfg.model), seed=cfg.seed, instructions=texts)


@writes_directory("train-base", "run_dir", BaseTrainConfig.run_path, BaseTrainConfig.input_paths)
def train_base(cfg: BaseTrainConfig) -> Path:
    """Train (or resume) and write ``<run_dir>/model`` in the upstream layout; returns that directory."""
    accelerator = setup_accelerator(cfg.mixed_precision)
    run_dir = cfg.run_path()
    resume_from = resume_point(cfg, run_dir, accelerator.is_main_process)
    if resume_from is not None:  # before the model is loaded: a changed model is refused, not trained
        reconcile_run(cfg, run_dir, resume_from, RESUME_FIXED, write=accelerator.is_main_process)
    seed_everything(cfg.seed)
    vla, processor = _load_or_build(cfg, run_dir, resume_from)
    model = FullTraining(vla.to(accelerator.device))
    dataset, loader = _dataloader(cfg, vla, processor, accelerator.process_index, accelerator.num_processes)
    stats = dataset.dataset_statistics
    vla.norm_stats = stats

    optimizer, scheduler, state = optimization_state(
        model.parameters(), cfg.optim, cfg.max_steps, resume_from, accelerator
    )
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.wait_for_everyone()  # every rank has read the previous config.yaml before it is replaced
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if resume_from is None:  # the tokenizer's merges depend on the data: resume reads them back
            processor.save_pretrained(run_dir / PROCESSOR_DIR)
    training = Training(ddp_model, optimizer, scheduler, state)
    check = SupervisionCheck(cfg.max_steps)  # token actions only: action-free data has nothing to teach
    with TrainLogger(
        run_dir, cfg.max_steps, state.step, accelerator.is_main_process, cfg.wandb_project, asdict(cfg)
    ) as log:
        stream = loader_batches(cfg, dataset, loader, state)
        metrics = train_loop(cfg, run_dir, training, stream, accelerator, log, Hooks(inspect=check))
    out = run_dir / MODEL_DIR
    if accelerator.is_main_process:
        save_vla(vla, processor, out, overwrite=True)  # this run's own output (a rerun writes it again)
        write_json_atomic(run_dir / "final_metrics.json", {"step": state.step, **metrics})
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BaseTrainConfig, sys.argv[1:] if argv is None else argv)
    print(f"base model written to {train_base(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
