"""`DataConfig`: everything the RLDS sample stream needs (draccus dataclass; `build()` makes the dataset)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from stamo_vla.configs import check_positive_int
from stamo_vla.data.augment import ImageAugConfig
from stamo_vla.fileio import dataset_inputs

FORMATS = ("rlds", "lerobot")  # on-disk formats; stamo_vla.data.sources reads both
SPLITS = {"train": "train[:{p}%]", "val": "train[{p}%:]", "all": "train"}


@dataclasses.dataclass
class DataConfig:
    """Where the RLDS data is and how samples are drawn from it (upstream OpenVLA defaults where they exist)."""

    # on-disk format: "rlds" (tfds, upstream OpenVLA) or "lerobot" (LeRobotDataset v3.0, e.g. lerobot/libero)
    format: str = "rlds"
    # rlds: folder that contains <dataset_name>/<version>/ (upstream --data_root_dir, e.g. .../modified_libero_rlds);
    # lerobot: the dataset root (holding meta/info.json) or the folder that contains <dataset_name>/
    data_root_dir: str = "datasets/modified_libero_rlds"
    # datasets to mix; each must exist under data_root_dir (e.g. a labeled and an action-free one)
    dataset_names: list[str] = dataclasses.field(default_factory=lambda: ["libero_spatial_no_noops"])
    # mixture weights, one per dataset (empty = equal weights); normalized to sum to 1
    weights: list[float] = dataclasses.field(default_factory=list)
    # multiply weights by each dataset's number of transitions (upstream balance_weights=True)
    balance_weights: bool = False
    # "train" = first train_percent% of episodes, "val" = the rest, "all" = every episode
    split: str = "train"
    # percent of episodes in the train split (upstream train[:95%] / train[95%:])
    train_percent: int = 95
    # future-frame offset h: FUTURE_IMAGE is frame min(t + h, T - 1)
    horizon: int = 1
    # actions per sample K: a_t .. a_{t+K-1}, never padded: the last K-1 steps of an episode start no sample (1 = OpenVLA, 8 = OFT)
    action_chunk: int = 1
    # side of the square images in samples (TF decode + tf.image.resize lanczos3 antialias, as upstream)
    image_size: int = 224
    # training-time image augmentation (upstream image_aug); always off for the val split
    image_aug: bool = False
    # augmentation ranges (used when image_aug is on)
    aug: ImageAugConfig = dataclasses.field(default_factory=ImageAugConfig)
    # load the wrist camera into WRIST_IMAGE
    load_wrist: bool = False
    # load the normalized 8-D proprio (EEF 6 + gripper 2) into PROPRIO
    load_proprio: bool = False
    # frames held by the shuffle buffer (references to JPEG-encoded episodes; decoded only when emitted).
    # Host memory grows with it (openvla #4/#39/#167): ~2 x 15 KB per frame held plus its episode
    shuffle_buffer_size: int = 10_000
    # episodes held by the episode-order shuffle (0 = stored order)
    episode_shuffle_buffer: int = 16
    # keep frames decoded at image_size in memory, up to this many MiB per reader, so each JPEG is decoded and
    # resized once instead of at every use (same pixels; ~37 KB per 112 px frame); 0 = decode at every use
    frame_cache_mb: int = 0
    # record files read in parallel by each reader (upstream used 16+ threads; keep small to bound memory)
    num_parallel_reads: int = 1
    # loop over the data forever (training); False = one pass (evaluation)
    repeat: bool = True
    # base seed of shuffling and augmentation (combined with rank, worker and epoch)
    seed: int = 7
    # existing dataset_statistics.json to normalize with (None = compute, cached by fingerprint)
    statistics_path: str | None = None
    # attach STATE / FUTURE_STATE from StaMo target caches written by `stamo-vla cache-targets`
    use_target_cache: bool = False
    # folder holding one cache per dataset, <root>/<dataset_name>/ (None = <data_root_dir>/<dataset_name>/stamo_targets)
    target_cache_root: str | None = None

    def input_paths(self, prefix: str = "") -> dict[str, str | Path | None]:
        """The stored datasets, statistics file and target caches read, by option name (`check_apart`)."""
        paths: dict[str, str | Path | None] = {f"{prefix}statistics_path": self.statistics_path}
        if self.use_target_cache:  # the cache of each dataset read, not the whole root
            for name in self.dataset_names:
                paths[f"{prefix}target_cache_root ({name})"] = self.target_cache_dir(name)
        return {**paths, **dataset_inputs(f"{prefix}data_root_dir", self.data_root_dir, self.dataset_names)}

    def __post_init__(self) -> None:
        if not self.dataset_names:
            raise ValueError("dataset_names=[] must name at least one dataset")
        if self.weights and len(self.weights) != len(self.dataset_names):
            raise ValueError(
                f"weights={self.weights} must have one entry per dataset in dataset_names={self.dataset_names}"
            )
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ValueError(f"weights={self.weights} must be >= 0 with a positive sum")
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r} is not a data format; allowed: {list(FORMATS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not valid; allowed: {list(SPLITS)}")
        if not 0 < self.train_percent <= 100:
            raise ValueError(f"train_percent={self.train_percent} must be in (0, 100]")
        for name in ("horizon", "shuffle_buffer_size", "episode_shuffle_buffer", "frame_cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("action_chunk", "image_size", "num_parallel_reads"):
            check_positive_int(name, getattr(self, name))

    @property
    def tfds_split(self) -> str:
        """The tfds split string of `split` (e.g. ``"train[:95%]"``)."""
        return SPLITS[self.split].format(p=self.train_percent)

    def target_cache_dir(self, dataset_name: str) -> str:
        """Where the StaMo target cache of `dataset_name` is expected."""
        if self.target_cache_root:
            return os.path.join(self.target_cache_root, dataset_name)
        return os.path.join(self.data_root_dir, dataset_name, "stamo_targets")

    @property
    def normalized_weights(self) -> list[float]:
        """Mixture weights summing to 1 (before `balance_weights`)."""
        weights = self.weights or [1.0] * len(self.dataset_names)
        total = float(sum(weights))
        return [w / total for w in weights]

    def build(
        self, rank: int | None = None, world_size: int | None = None, encoder_fingerprint: str | None = None
    ):
        """Make the sample stream: one `RLDSFrameDataset`, or a `MixtureDataset` over several.

        Args:
            rank: this process's data-parallel rank (None = from torch.distributed / env, else 0).
            world_size: number of data-parallel ranks (None = from torch.distributed / env, else 1).
            encoder_fingerprint: with ``use_target_cache``, the StaMo encoder fingerprint every cache must have
                been built with (None = accept each cache's own, recorded in its manifest.json).
        """
        from stamo_vla.data.dataset import build_dataset

        return build_dataset(self, rank=rank, world_size=world_size, encoder_fingerprint=encoder_fingerprint)
