"""``stamo-vla cache-targets``: encode a dataset's frames once with the frozen encoder of an auxiliary target.

    stamo-vla cache-targets --data_root_dir D --dataset_name N --target state --stamo_path CKPT
    stamo-vla cache-targets --data_root_dir D --dataset_name N --target untrained --stamo_path CKPT --target_seed 0
    stamo-vla cache-targets --data_root_dir D --dataset_name N --target features --vla_path BASE --feature_grid 2

Targets state and motion share one cache (both are made of StaMo states). The cache format, resume and the
checks are `stamo_vla.data.target_cache`'s; fine-tuning with ``data.use_target_cache=true`` reads it and refuses a
cache of another target.
"""

from __future__ import annotations

import dataclasses
import sys

from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.targets import get_target, target_names
from stamo_vla.configs import check_choice, check_positive_int, parse_config
from stamo_vla.data.target_cache import build_target_cache, default_cache_dir
from stamo_vla.fileio import check_apart, dataset_inputs


@dataclasses.dataclass
class CacheTargetsConfig:
    """Options of ``stamo-vla cache-targets``."""

    # folder containing <dataset_name>/<version>/
    data_root_dir: str = ""
    # dataset to encode
    dataset_name: str = ""
    # the adapter.target the cache is for: state | motion (one StaMo-state cache serves both) | untrained | features
    target: str = "state"
    # StaMo encoder or autoencoder directory (save_pretrained); targets state, motion and untrained
    stamo_path: str | None = None
    # base policy checkpoint directory whose frozen vision backbone makes target features (e.g. the run's
    # <run_dir>/base_model for vla_path=tiny)
    vla_path: str | None = None
    # target untrained: seed of its random compressor weights (must equal the run's adapter.target_seed)
    target_seed: int = 0
    # target features: side of the pooled grid (must equal the run's adapter.feature_grid)
    feature_grid: int = 2
    # cache directory (None: <data_root_dir>/<dataset_name>/stamo_targets)
    output_dir: str | None = None
    # frames per encoder call
    batch_size: int = 32
    # torch device (None: cuda when available, else cpu)
    device: str | None = None
    # replace a cache built with another encoder or dataset
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("data_root_dir", "dataset_name"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give --{name}")
        cached = [name for name in target_names() if get_target(name).has_head]
        check_choice("target", self.target, cached)
        spec = get_target(self.target)
        if spec.needs_stamo and not self.stamo_path:
            raise ValueError(f"target={self.target!r} is made of StaMo states: give --stamo_path")
        if spec.frames == "backbone_features" and not self.vla_path:
            raise ValueError(
                "target='features' is made of the base policy's backbone features: give --vla_path"
            )
        check_positive_int("batch_size", self.batch_size)

    def adapter_config(self) -> StaMoAdapterConfig:
        """The adapter fields the target encoder depends on."""
        return StaMoAdapterConfig(
            target=self.target, target_seed=self.target_seed, feature_grid=self.feature_grid
        )


def load_target_encoder(cfg: CacheTargetsConfig, device: str):
    """The frozen per-frame encoder of ``cfg.target``, on `device`."""
    from stamo_vla.adapter.target_encoders import build_target_encoder

    stamo = base = processor = None
    if cfg.stamo_path:
        from stamo_vla.stamo import StaMoEncoder

        stamo = StaMoEncoder.from_pretrained(cfg.stamo_path).to(device)
    if get_target(cfg.target).frames == "backbone_features":
        from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor
        from stamo_vla.vla.loading import load_vla

        base = load_vla(OpenVLAForActionPrediction, cfg.vla_path, device=device)
        processor = OpenVLAProcessor.from_pretrained(cfg.vla_path)
    return build_target_encoder(cfg.adapter_config(), stamo, base, processor)


def main_cache_targets(argv: list[str] | None = None) -> int:
    """``stamo-vla cache-targets``: encode a dataset's frames once with a target's frozen encoder."""
    import torch

    cfg = parse_config(CacheTargetsConfig, sys.argv[1:] if argv is None else argv)
    out = cfg.output_dir or default_cache_dir(cfg.data_root_dir, cfg.dataset_name)
    inputs = dataset_inputs("data_root_dir", cfg.data_root_dir, [cfg.dataset_name])
    check_apart({"output_dir": out}, {"stamo_path": cfg.stamo_path, "vla_path": cfg.vla_path, **inputs})
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = load_target_encoder(cfg, device)
    out = build_target_cache(
        cfg.data_root_dir, cfg.dataset_name, encoder, cfg.output_dir, cfg.batch_size, cfg.overwrite, device
    )
    print(f"target {cfg.target!r} for '{cfg.dataset_name}' cached in {out}")
    return 0


main = main_cache_targets
