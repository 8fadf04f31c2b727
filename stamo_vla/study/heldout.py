"""Metrics of a finished fine-tuning run on its held-out episodes (the ``val`` split of its own data config).

    stamo-vla heldout --run_dir runs/study/finetune/none_seed0
    stamo-vla heldout --run_dir ... --dataset_name libero_spatial_heldout   # every episode of another dataset

With ``dataset_name`` the run is scored on every episode of that dataset (in the run's data root, normalized with
the run's statistics, its targets read from that dataset's cache when the run trained on caches): the policy study
collects such a dataset with the same episodes per evaluated task, so the held-out metrics cover every task. Writes ``<run_dir>/heldout_metrics.json``: the model's own metrics (action L1 in normalized units, token
accuracy, StaMo target losses) averaged over every held-out sample, with the sample count.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from stamo_vla import keys as K
from stamo_vla.adapter import load_adapter
from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.fileio import write_json_atomic
from stamo_vla.training.finetune_config import FinetuneConfig
from stamo_vla.training.run_config import load_run_config

HELDOUT_METRICS = "heldout_metrics.json"


@dataclass
class HeldoutConfig:
    """Score a fine-tuning run on its held-out episodes."""

    # A fine-tuning run directory (holds config.yaml, dataset_statistics.json and adapter/).
    run_dir: str = ""
    # Samples per forward pass.
    batch_size: int = 32
    # Score every episode of this dataset (in the run's data root) instead of the run's own val split.
    dataset_name: str | None = None

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ValueError("run_dir='' is not valid; pass --run_dir <fine-tuning run directory>")
        check_positive_int("batch_size", self.batch_size)


def heldout_config(run_dir: Path, dataset_name: str | None = None):
    """The run's saved config with its data switched to one unaugmented pass over the held-out episodes: its
    val split, or every episode of `dataset_name` (from its own target cache when the run used caches)."""
    cfg = load_run_config(FinetuneConfig, run_dir / "config.yaml")  # old field names included
    if dataset_name is not None:
        cfg.data = dataclasses.replace(cfg.data, dataset_names=[dataset_name], weights=[], split="all")
    elif cfg.data.train_percent >= 100:
        raise ValueError(
            f"{run_dir} trained on every episode (data.train_percent=100): it has no held-out episodes to score; "
            "pass --dataset_name <a held-out dataset>"
        )
    else:
        cfg.data = dataclasses.replace(cfg.data, split="val")
    cfg.data = dataclasses.replace(cfg.data, repeat=False, image_aug=False)
    cfg.data.statistics_path = str(run_dir / "dataset_statistics.json")  # normalize as the run did
    return cfg


@torch.no_grad()
def heldout_metrics(run_dir: str | Path, batch_size: int = 32, dataset_name: str | None = None) -> dict:
    """Average every metric of ``model(batch)`` over the held-out samples of the run in `run_dir` (its val split,
    or every episode of `dataset_name`).

    Args:
        run_dir: the fine-tuning run.
        batch_size: samples per batch.
        dataset_name: a dataset whose every episode is held out (None: the run's val split).
    """
    from stamo_vla.training.finetune import BASE_MODEL_DIR, build_dataloader, load_stamo
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    run_dir = Path(run_dir)
    cfg = heldout_config(run_dir, dataset_name)
    cfg.batch_size = batch_size
    base_path = (
        str(run_dir / BASE_MODEL_DIR) if cfg.vla_path == "tiny" else cfg.vla_path
    )  # as finetune resolves it
    base = OpenVLAForActionPrediction.from_pretrained(base_path)
    model = load_adapter(base, run_dir / "adapter").eval()
    live = model.config.has_head and not cfg.data.use_target_cache
    if live:
        model.set_stamo(*load_stamo(cfg, "cpu"))
    processor = OpenVLAProcessor.from_pretrained(base_path)
    # the caches must hold the states of the encoder the run trained on, as in training
    cache_fingerprint = model.provenance.stamo_fingerprint if cfg.data.use_target_cache else None
    _, loader = build_dataloader(cfg, base, processor, live, 0, 1, cache_fingerprint)
    totals: dict[str, float] = {}
    count = 0
    for batch in loader:
        n = int(batch[K.INPUT_IDS].shape[0])
        _, metrics = model(batch)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value) * n
        count += n
    if count == 0:
        raise ValueError(f"the held-out split of {run_dir} ({cfg.data.tfds_split}) has no samples")
    datasets = cfg.data.dataset_names
    return {
        "samples": count,
        "datasets": datasets,
        "split": cfg.data.tfds_split,
        **{k: v / count for k, v in totals.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_config(HeldoutConfig, sys.argv[1:] if argv is None else argv)
    metrics = heldout_metrics(args.run_dir, args.batch_size, args.dataset_name)
    write_json_atomic(Path(args.run_dir) / HELDOUT_METRICS, metrics)
    print(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
