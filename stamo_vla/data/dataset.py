"""Torch sample streams over RLDS datasets: `RLDSFrameDataset`, `MixtureDataset`, `make_dataloader`.

One sample = one timestep t of one episode (keys and shapes: `stamo_vla.keys`)::

    IMAGE (S,S,3) uint8, FUTURE_IMAGE (S,S,3) uint8 [frame min(t+h, T-1)], WRIST_IMAGE (optional),
    INSTRUCTION str, ACTION (K,7) float32 normalized, PROPRIO (8,) float32 normalized (optional),
    HAS_ACTION bool, DATASET_NAME str, EPISODE_ID str (`episode_id`), STEP int, FUTURE_STEP int,
    STATE / FUTURE_STATE (N,D) float32 when a StaMo target cache is configured.

Sharding: the split's episodes are cut into ``world_size * num_workers`` contiguous, disjoint blocks and each
(rank, DataLoader worker) reads only its own block (upstream gave every rank the same stream). Memory stays
bounded: episodes stay JPEG-encoded, the shuffle buffer holds (episode, step) references and frames are decoded
only when a sample is emitted. Action-free episodes give ``ACTION = 0`` and ``HAS_ACTION = False``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from stamo_vla import keys
from stamo_vla.data import spec, transforms
from stamo_vla.data.augment import augment_image, sample_params
from stamo_vla.data.config import DataConfig
from stamo_vla.data.episodes import episode_id
from stamo_vla.data.lerobot import resize_frame
from stamo_vla.data.normalization import normalize
from stamo_vla.data.sources import iter_episodes
from stamo_vla.data.statistics import check_block_dims, compute_statistics, load_dataset_statistics
from stamo_vla.data.target_cache import TargetCache
from stamo_vla.data.tf_setup import import_tfds

log = logging.getLogger(__name__)

# which augmentation draw each image uses: 0 = the primary camera's, 1 = the wrist camera's
_AUG_CAMERA = {keys.IMAGE: 0, keys.FUTURE_IMAGE: 0, keys.WRIST_IMAGE: 1}


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed, else RANK / WORLD_SIZE env, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    return rank, world_size


def decode_frame(jpeg: bytes | np.ndarray, size: int) -> np.ndarray:
    """JPEG bytes -> (size, size, 3) uint8, bit for bit as upstream's RLDS pipeline makes its frames.

    Upstream (OpenVLA / OFT ``decode_and_resize`` + dlimp ``resize_image``): ``tf.io.decode_image`` (libjpeg with
    TF's default, the fast integer IDCT), then ``tf.image.resize(method="lanczos3", antialias=True)`` always (also
    at the stored size), then round, clip and cast to uint8. The reader already runs TF, so we call the same ops.
    """
    if isinstance(jpeg, np.ndarray):  # a decoded LeRobot frame: the same resize, without TF
        return resize_frame(jpeg, size)
    tf, _ = import_tfds("decoding training frames")
    img = tf.io.decode_image(jpeg, expand_animations=False, dtype=tf.uint8)
    img = tf.image.resize(img, (size, size), method="lanczos3", antialias=True)
    img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
    return np.array(img.numpy(), dtype=np.uint8)  # a writable copy: torch warns on read-only arrays


class DecodedFrames:
    """Frames decoded at the policy's size, kept so that each JPEG is decoded and resized once per process.

    Keyed by the JPEG's content digest (not by episode and step: a file path may name several episodes), so a
    hit returns exactly what `decode_frame` would return. Frames are kept until ``max_mb`` is reached; later
    ones are decoded on every use. Each DataLoader worker holds its own.

    Args:
        max_mb: memory bound in MiB (0: keep nothing, decode every time).
    """

    def __init__(self, max_mb: int) -> None:
        self.max_bytes, self.bytes = int(max_mb) * 2**20, 0
        self._frames: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def decode(self, jpeg: bytes, size: int) -> np.ndarray:
        """`decode_frame(jpeg, size)`, from memory when this frame was decoded before (a copy: callers own it)."""
        if self.max_bytes <= 0:
            return decode_frame(jpeg, size)
        key = hashlib.blake2b(jpeg, digest_size=16, person=size.to_bytes(4, "little")).digest()
        frame = self._frames.get(key)
        if frame is None:
            frame = decode_frame(jpeg, size)
            if self.bytes + frame.nbytes > self.max_bytes:
                return frame
            self._frames[key], self.bytes = frame, self.bytes + frame.nbytes
        return frame.copy()


class _Episode:
    """One episode prepared for sampling: JPEG frames, normalized actions/proprio, optional cached states."""

    def __init__(self, raw: dict, cfg: DataConfig, dataset_name: str, stats: dict, states: np.ndarray | None):
        self.image, self.wrist = raw["image"], raw["wrist_image"] if cfg.load_wrist else None
        self.length = len(raw["image"])
        self.has_action = raw["has_action"]
        if self.has_action:
            self.action = transforms.normalized_actions(raw["action"], stats["action"])
        else:
            self.action = np.zeros((self.length, raw["action"].shape[-1]), np.float32)
        self.proprio = (
            normalize(transforms.proprio_from_state(raw["state"]), stats["proprio"])
            if cfg.load_proprio
            else None
        )
        self.future = transforms.future_indices(self.length, cfg.horizon)
        self.instruction, self.file_path, self.dataset_name = (
            raw["language_instruction"],
            raw["file_path"],
            dataset_name,
        )
        self.states = states
        self.identity = episode_id(raw)


class RLDSFrameDataset(IterableDataset):
    """Samples from one RLDS dataset, sharded per DDP rank and per DataLoader worker.

    Args:
        cfg: data settings (split, horizon, chunk, image size, augmentation, buffers, repeat, seed).
        dataset_name: which dataset under ``cfg.data_root_dir``.
        statistics: this dataset's statistics block (``{"action": ..., "proprio": ...}``) for normalization.
        rank: data-parallel rank (None = discover, see `resolve_rank`).
        world_size: number of data-parallel ranks (None = discover).
        encoder_fingerprint: with ``cfg.use_target_cache``, the StaMo encoder fingerprint the cache must have been
            built with (None = accept the cache's own).
    """

    def __init__(
        self,
        cfg: DataConfig,
        dataset_name: str,
        statistics: dict,
        rank: int | None = None,
        world_size: int | None = None,
        encoder_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.dataset_name, self.statistics = cfg, dataset_name, statistics
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.augment = cfg.image_aug and cfg.split == "train"
        self.frames = DecodedFrames(cfg.frame_cache_mb)
        self.target_cache = None
        if cfg.use_target_cache:
            self.target_cache = TargetCache.open(
                cfg.target_cache_dir(dataset_name),
                cfg.data_root_dir,
                dataset_name,
                encoder_fingerprint,
            )

    def shard(self) -> tuple[int, int]:
        """(index, count) of the episode block this rank + DataLoader worker reads."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def _episodes(self, shard: tuple[int, int], seed: int) -> Iterator[_Episode]:
        for raw in iter_episodes(
            self.cfg.data_root_dir,
            self.dataset_name,
            self.cfg.tfds_split,
            fmt=self.cfg.format,
            decode_images=False,
            shard=shard,
            shuffle_episodes=self.cfg.episode_shuffle_buffer if self.cfg.repeat else 0,
            seed=seed,
            num_parallel_reads=self.cfg.num_parallel_reads,
        ):
            states = self.target_cache.load_episode(raw) if self.target_cache else None
            yield _Episode(raw, self.cfg, self.dataset_name, self.statistics, states)

    def _refs(self, shard: tuple[int, int], rng: np.random.Generator) -> Iterator[tuple[_Episode, int]]:
        """(episode, step) references, epoch after epoch when `repeat` is set."""
        while True:
            count = 0
            for ep in self._episodes(shard, int(rng.integers(2**31))):
                # chunk anchors only: the last K-1 steps start no chunk (upstream OFT; K = 1: every step)
                for t in range(transforms.num_chunk_anchors(ep.length, self.cfg.action_chunk)):
                    count += 1
                    yield ep, t
            if not self.cfg.repeat or count == 0:  # an empty shard must not spin forever
                if count == 0:
                    log.warning(
                        "%s: shard %s of split %s has no episodes", self.dataset_name, shard, self.cfg.split
                    )
                return

    def set_resume_position(self, consumed_batches: int, batch_size: int) -> None:
        """Start the next iteration where a DataLoader that already yielded `consumed_batches` stopped.

        Skipped samples are not decoded (only their episodes' records are read and the random draws
        replayed), so resuming a long run is cheap and the stream continues exactly as it would have.
        """
        self._resume = _check_resume(consumed_batches, batch_size)

    def __iter__(self) -> Iterator[dict]:
        return self.iter_samples(_samples_to_skip(getattr(self, "_resume", (0, 1))))

    def iter_samples(self, skip: int = 0) -> Iterator[dict]:
        """This rank's and worker's sample stream, without its first `skip` samples (never decoded)."""
        shard = self.shard()
        rng = np.random.default_rng([self.cfg.seed, shard[0], shard[1]])
        size = self.cfg.shuffle_buffer_size
        buffer: list[tuple[_Episode, int]] = []

        def emit(ref: tuple[_Episode, int]) -> Iterator[dict]:
            nonlocal skip
            if skip > 0:  # replay the random draws make_sample would make, decode nothing
                skip -= 1
                self._augment_draws(ref[0], rng)
                return
            yield self.make_sample(*ref, rng)

        for ref in self._refs(shard, rng):
            if size <= 1:
                yield from emit(ref)
            elif len(buffer) < size:
                buffer.append(ref)
            else:
                i = int(rng.integers(len(buffer)))
                out, buffer[i] = buffer[i], ref
                yield from emit(out)
        rng.shuffle(buffer)
        for ref in buffer:
            yield from emit(ref)

    def _augment_draws(self, ep: _Episode, rng: np.random.Generator) -> list:
        """One independent augmentation draw per camera (primary, then wrist), as upstream OFT seeds each image
        separately; the future frame is the primary camera's and shares its draw. [] when not augmenting."""
        if not self.augment:
            return []
        return [sample_params(rng, self.cfg.aug) for _ in range(1 if ep.wrist is None else 2)]

    def make_sample(self, ep: _Episode, t: int, rng: np.random.Generator) -> dict:
        """Decode and assemble the sample of step `t` of `ep`.

        Args:
            ep: the episode.
            t: the step within it.
            rng: the generator of this sample's image augmentation.
        """
        size, tf, decode = self.cfg.image_size, int(ep.future[t]), self.frames.decode
        images = {keys.IMAGE: decode(ep.image[t], size), keys.FUTURE_IMAGE: decode(ep.image[tf], size)}
        if ep.wrist is not None:
            images[keys.WRIST_IMAGE] = decode(ep.wrist[t], size)
        draws = self._augment_draws(ep, rng)
        if draws:
            images = {k: augment_image(v, draws[_AUG_CAMERA[k]]) for k, v in images.items()}
        sample = {
            **images,
            keys.INSTRUCTION: ep.instruction,
            keys.ACTION: transforms.action_chunk(ep.action, t, self.cfg.action_chunk),
            keys.HAS_ACTION: ep.has_action,
            keys.DATASET_NAME: ep.dataset_name,
            keys.EPISODE_ID: ep.identity,
            keys.STEP: t,
            keys.FUTURE_STEP: tf,
        }
        if ep.proprio is not None:
            sample[keys.PROPRIO] = ep.proprio[t]
        if ep.states is not None:
            sample[keys.STATE], sample[keys.FUTURE_STATE] = ep.states[t], ep.states[tf]
        return sample


class MixtureDataset(IterableDataset):
    """Interleave several sample streams, drawing the next source with probability proportional to `weights`.

    Each source shards itself (rank and worker), so the mixture only decides which source speaks next. A
    finite source that runs out is dropped and the others continue (weights renormalized).

    Args:
        datasets: iterable datasets (e.g. a labeled and an action-free `RLDSFrameDataset`).
        weights: non-negative mixing weights, one per dataset.
        seed: seed of the source choice (combined with rank and worker).
    """

    def __init__(self, datasets: Sequence[IterableDataset], weights: Sequence[float], seed: int = 0) -> None:
        super().__init__()
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(
                f"need one weight per dataset; got {len(datasets)} datasets and weights={list(weights)}"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights={list(weights)} must be >= 0 with a positive sum")
        self.datasets, self.seed = list(datasets), int(seed)
        self.weights = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.dataset_statistics = {}
        for d in self.datasets:
            self.dataset_statistics.update(getattr(d, "dataset_statistics", {}))

    def set_resume_position(self, consumed_batches: int, batch_size: int) -> None:
        """See `RLDSFrameDataset.set_resume_position` (exact for infinite sources, i.e. ``repeat=True``)."""
        self._resume = _check_resume(consumed_batches, batch_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        rank = getattr(self.datasets[0], "rank", 0)
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        weights = self.weights.copy()
        # replay the source choices of the skipped samples, then let each source skip its share
        skips = np.zeros(len(self.datasets), dtype=np.int64)
        for _ in range(_samples_to_skip(getattr(self, "_resume", (0, 1)))):
            skips[int(rng.choice(len(weights), p=weights / weights.sum()))] += 1  # same draws as below
        iters = [
            d.iter_samples(int(k)) if hasattr(d, "iter_samples") else iter(d)
            for d, k in zip(self.datasets, skips)
        ]
        while weights.sum() > 0:
            i = int(rng.choice(len(iters), p=weights / weights.sum()))
            try:
                yield next(iters[i])
            except StopIteration:
                weights[i] = 0.0


def _check_resume(consumed_batches: int, batch_size: int) -> tuple[int, int]:
    if consumed_batches < 0 or batch_size < 1:
        raise ValueError(f"consumed_batches={consumed_batches} must be >= 0 and batch_size={batch_size} >= 1")
    return int(consumed_batches), int(batch_size)


def _samples_to_skip(resume: tuple[int, int]) -> int:
    """Samples this worker already produced: a DataLoader takes batch i from worker i % num_workers."""
    consumed, batch_size = resume
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return len(range(worker, consumed, workers)) * batch_size


def build_dataset(
    cfg: DataConfig,
    rank: int | None = None,
    world_size: int | None = None,
    encoder_fingerprint: str | None = None,
) -> IterableDataset:
    """The sample stream of `cfg`: statistics loaded (or computed, cached), one dataset or a mixture.

    `encoder_fingerprint`: see `DataConfig.build`.

    The returned dataset has ``dataset_statistics`` ({name: block}, the upstream dataset_statistics.json
    content) to save next to checkpoints.

    Args:
        cfg: the data configuration.
        rank: this process's rank (None: the accelerator's, or 0).
        world_size: the number of ranks (None: the accelerator's, or 1).
        encoder_fingerprint: see `DataConfig.build`.
    """
    given = load_dataset_statistics(cfg.statistics_path) if cfg.statistics_path else {}
    datasets = []
    for name in cfg.dataset_names:
        stats = given.get(name) or compute_statistics(
            cfg.data_root_dir, name, num_parallel_reads=cfg.num_parallel_reads
        )
        if cfg.load_proprio and name in given:
            check_block_dims(stats, "proprio", spec.STATE_DIM, f"'{cfg.statistics_path}' entry '{name}'")
        ds = RLDSFrameDataset(cfg, name, stats, rank, world_size, encoder_fingerprint)
        ds.dataset_statistics = {name: stats}
        datasets.append(ds)
    if len(datasets) == 1:
        return datasets[0]
    weights = cfg.normalized_weights
    if cfg.balance_weights:
        weights = [w * d.statistics["num_transitions"] for w, d in zip(weights, datasets)]
    return MixtureDataset(datasets, weights, seed=cfg.seed)


def make_dataloader(
    dataset: IterableDataset, batch_size: int, num_workers: int = 0, collate_fn=None, **kwargs
) -> torch.utils.data.DataLoader:
    """A DataLoader over a sample stream; uses "spawn" workers when tensorflow is already imported here.

    Forking a process whose TF runtime has started can deadlock the child's TF thread pools, so once TF is
    loaded (e.g. statistics were just computed) workers are spawned fresh instead.

    Args:
        dataset: the sample stream.
        batch_size: samples per batch.
        num_workers: worker processes (0: load in this process).
        collate_fn: turns a list of samples into a batch (None: the default collation).
        **kwargs: further `torch.utils.data.DataLoader` arguments.
    """
    if num_workers > 0 and "tensorflow" in sys.modules and "multiprocessing_context" not in kwargs:
        kwargs["multiprocessing_context"] = "spawn"
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn, **kwargs
    )
