"""Target cache: encode every frame once with a frozen target encoder, so fine-tuning runs no encoder.

Layout of one dataset's cache directory::

    manifest.json                     target kind, encoder + dataset fingerprints, N, D, image source, version
    episodes/<key>.safetensors        "states": (T, N, D) float32 for the episode's primary-camera frames;
                                      metadata episode_id, file_path and num_steps
                                      (key = `stamo_vla.data.episodes.episode_key` of the episode's identity)

Episodes are keyed by `stamo_vla.data.episodes.episode_id` (file path + content digest), never by ``file_path``
alone, which about 50 episodes of a released LIBERO dataset share; a dataset that still repeats an identity is
refused. Caches of format_version 1 were keyed by ``file_path`` and are refused with the command that rebuilds them.

The per-frame encoder is the one a target is made of (`stamo_vla.adapter.targets`): the trained StaMo encoder
(``target_kind`` "stamo": targets state and motion share one cache), the untrained StaMo encoder
("untrained_stamo", with its seed) or the policy's vision backbone features ("backbone_features", with its grid).
Any encoder with ``encode(pixels) -> (B, N, D)`` fits; it describes itself with ``target_manifest()`` (a plain
`StaMoEncoder` is "stamo"). A manifest written before the kind was recorded is read as "stamo".

Frames are the stored 256x256 upright primary-camera images, un-augmented, as float [0, 1] (the encoder resizes
and normalizes internally). Shards are written atomically one episode at a time, so an interrupted run resumes
where it stopped; an existing shard is reused only when the manifest's fingerprints match. Every shard is checked
for finite values when it is written and when it is read.

A cache is refused (with what differs and the command to rebuild it) when its target kind or encoder fingerprint
differs from the expected one or its dataset fingerprint differs from the dataset on disk (the dataset was
rebuilt).

Command line (`stamo_vla.adapter.cache_targets`)::

    stamo-vla cache-targets --data_root_dir D --dataset_name N --target state --stamo_path CKPT [--output_dir DIR]
    stamo-vla cache-targets --data_root_dir D --dataset_name N --target features --vla_path BASE [--output_dir DIR]

Default ``--output_dir``: ``<data_root_dir>/<dataset_name>/stamo_targets`` (`default_cache_dir`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from stamo_vla.configs import check_positive_int
from stamo_vla.data.episodes import EpisodeIdentities, episode_id, episode_key
from stamo_vla.data.sources import dataset_fingerprint, iter_episodes, resolve_dataset_dir
from stamo_vla.data.transforms import future_indices
from stamo_vla.fileio import read_json, safetensors_problem, save_weights, write_json_atomic
from stamo_vla.stamo import fingerprint
from stamo_vla.stamo.pixels import uint8_to_pixels

# 2: episodes keyed by their identity (file path + content digest); 1 keyed them by file_path alone
FORMAT_VERSION = 2
LEGACY_TARGET_KIND = "stamo"  # what a manifest without "target_kind" was built with
IMAGE_SOURCE = "steps/observation/image (stored frame, upright, un-augmented, float [0, 1])"


class StaleTargetCacheError(ValueError):
    """The cache was built with another encoder or from another version of the dataset."""


def default_cache_dir(data_root_dir: str | os.PathLike, dataset_name: str) -> Path:
    """Where `cache-targets` writes by default and where `DataConfig` looks when no root is given."""
    return Path(data_root_dir) / dataset_name / "stamo_targets"


def _rebuild_hint(cache_dir: Path, data_root_dir, dataset_name: str) -> str:
    return (
        f"Rebuild it with: stamo-vla cache-targets --data_root_dir {data_root_dir} --dataset_name {dataset_name} "
        f"--target <adapter.target> --stamo_path <encoder checkpoint> (target features: --vla_path <base policy>) "
        f"--output_dir {cache_dir} --overwrite true"
    )


def target_facts(encoder) -> dict:
    """What a cache records about the encoder that made it: ``target_kind``, ``encoder_fingerprint``,
    ``num_state_tokens``, ``state_dim`` (and the encoder's own extras, e.g. ``target_seed``)."""
    describe = getattr(encoder, "target_manifest", None)
    if callable(describe):
        return dict(describe())
    return {
        "target_kind": LEGACY_TARGET_KIND,
        "encoder_fingerprint": fingerprint(encoder),
        "num_state_tokens": int(encoder.config.num_state_tokens),
        "state_dim": int(encoder.config.state_dim),
    }


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """A cache's manifest.json (a manifest from before target kinds were recorded reads as kind "stamo")."""
    path = Path(cache_dir) / "manifest.json"
    manifest = read_json(
        path,
        "Rebuild the cache with `stamo-vla cache-targets ... --overwrite true`.",
        error=StaleTargetCacheError,
    )
    manifest.setdefault("target_kind", LEGACY_TARGET_KIND)
    return manifest


def _check_manifest(
    manifest: dict, expected: dict, cache_dir: Path, data_root_dir, dataset_name: str
) -> None:
    diffs = [
        f"{key}: cache has {manifest.get(key)!r}, expected {value!r}"
        for key, value in expected.items()
        if value is not None and manifest.get(key) != value
    ]
    if diffs:
        why = ""
        if manifest.get("format_version") == 1:
            why = (
                " (format 1 keyed episodes by file_path, which episodes of one task share in released LIBERO "
                "data, so one episode could be given another's states)"
            )
        raise StaleTargetCacheError(
            f"StaMo target cache '{cache_dir}' does not match: "
            + "; ".join(diffs)
            + why
            + ". "
            + _rebuild_hint(cache_dir, data_root_dir, dataset_name)
        )


class TargetCache:
    """Read side of a target cache: per-episode (T, N, D) states, after fingerprint checks."""

    def __init__(self, cache_dir: Path, manifest: dict) -> None:
        self.cache_dir, self.manifest = cache_dir, manifest

    @classmethod
    def open(
        cls,
        cache_dir: str | os.PathLike,
        data_root_dir: str | os.PathLike,
        dataset_name: str,
        encoder_fingerprint: str | None = None,
        target_kind: str | None = None,
    ) -> TargetCache:
        """Open a cache and check it against the dataset on disk (and the encoder and target kind, when given).

        Args:
            cache_dir: the cache folder.
            data_root_dir: the folder that holds the dataset the cache was built from.
            dataset_name: that dataset's folder name.
            encoder_fingerprint: the target encoder's fingerprint to match (None: not checked).
            target_kind: the target kind to match (None: not checked).

        Raises:
            FileNotFoundError: no cache there (with the command that builds it).
            StaleTargetCacheError: fingerprints differ (what differs, how to rebuild).
        """
        cache_dir = Path(cache_dir)
        manifest_path = cache_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"no StaMo target cache at '{cache_dir}' (manifest.json missing). "
                + _rebuild_hint(cache_dir, data_root_dir, dataset_name).replace("Rebuild it", "Build it")
            )
        manifest = read_manifest(cache_dir)
        expected = {
            "format_version": FORMAT_VERSION,
            "dataset_name": dataset_name,
            "dataset_fingerprint": dataset_fingerprint(resolve_dataset_dir(data_root_dir, dataset_name)),
            "target_kind": target_kind,
            "encoder_fingerprint": encoder_fingerprint,
        }
        _check_manifest(manifest, expected, cache_dir, data_root_dir, dataset_name)
        return cls(cache_dir, manifest)

    def shard_path(self, identity: str) -> Path:
        """Where the states of the episode with this identity (`stamo_vla.data.episodes.episode_id`) live."""
        return self.cache_dir / "episodes" / f"{episode_key(identity)}.safetensors"

    def load_episode(self, episode: dict) -> np.ndarray:
        """(T, N, D) float32 states of one episode (as `iter_episodes` yields it); a clear error when the cache
        is incomplete."""
        from safetensors import safe_open

        identity, num_steps = episode_id(episode), len(episode["action"])
        path = self.shard_path(identity)
        if not path.is_file():
            raise FileNotFoundError(
                f"StaMo target cache '{self.cache_dir}' has no entry for episode '{identity}' (the cache run "
                "did not finish). Rerun the same `stamo-vla cache-targets` command: it resumes."
            )

        problem = safetensors_problem(path)
        if problem is not None:
            raise StaleTargetCacheError(
                f"StaMo target cache: {problem}. Rerun the same `stamo-vla cache-targets` command: it "
                "re-encodes damaged entries."
            )
        with safe_open(str(path), framework="numpy") as f:
            states = f.get_tensor("states")
        if len(states) != num_steps:
            raise StaleTargetCacheError(
                f"cache entry {path} has {len(states)} steps but episode '{identity}' has {num_steps}; "
                "the cache does not belong to this dataset. Rebuild it with --overwrite."
            )
        check_finite(states, path)
        return states


def check_finite(states: np.ndarray, path: Path | str) -> None:
    """Raise naming the shard, the first bad step and what to do when `states` holds NaN or inf."""
    finite = np.isfinite(states.reshape(len(states), -1)).all(axis=1)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    raise StaleTargetCacheError(
        f"target cache shard {path} holds non-finite values (NaN or inf) at {len(bad)} of {len(states)} steps, "
        f"first at step {int(bad[0])}; training on them would make the loss NaN. Rerun the same "
        "`stamo-vla cache-targets` command: it re-encodes that shard (if the encoder itself produces non-finite "
        "values, the rerun stops naming the episode: check the encoder checkpoint)."
    )


def target_statistics(cache_dirs: Iterable[str | os.PathLike], horizon: int, difference: bool) -> dict:
    """Per-dimension mean and std of a target over every episode of the caches in `cache_dirs`.

    The target of step t is ``f(t+h)`` (or ``f(t+h) - f(t)`` with `difference`), with t+h clamped at the episode
    end as in the sample stream; every step of every cached episode counts once (like upstream's action
    statistics, computed over the whole dataset). Accumulated in float64.

    Args:
        cache_dirs: the target cache folders.
        horizon: h, the offset of the target frame.
        difference: the target is ``f(t+h) - f(t)`` (motion) instead of ``f(t+h)`` (state).

    Returns:
        ``{"mean": (N, D) float32, "std": (N, D) float32, "count": steps}``.
    """
    from safetensors import safe_open

    total = total_sq = None
    count = 0
    for cache_dir in cache_dirs:
        for path in sorted((Path(cache_dir) / "episodes").glob("*.safetensors")):
            with safe_open(str(path), framework="numpy") as f:
                states = f.get_tensor("states")
            check_finite(states, path)
            targets = states[future_indices(len(states), horizon)].astype(np.float64)
            if difference:
                targets = targets - states.astype(np.float64)
            total = targets.sum(0) if total is None else total + targets.sum(0)
            total_sq = (targets**2).sum(0) if total_sq is None else total_sq + (targets**2).sum(0)
            count += len(targets)
    if count == 0:
        raise FileNotFoundError(
            f"no cached episodes under {[str(d) for d in cache_dirs]}: build the cache with `stamo-vla cache-targets`"
        )
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "count": count}


def shard_problem(path: Path, num_steps: int) -> str | None:
    """Why a cache shard cannot be reused (truncated, unreadable, wrong length, non-finite), or None."""
    from safetensors import safe_open

    problem = safetensors_problem(path)
    if problem is not None:
        return problem
    try:
        with safe_open(str(path), framework="numpy") as f:
            states = f.get_tensor("states")
    except Exception as err:  # safetensors raises its own error types
        return f"{path} cannot be read ({err})"
    if len(states) != num_steps:
        return f"{path} has {len(states)} steps, the episode {num_steps}"
    return None if np.isfinite(states).all() else f"{path} holds non-finite values"


def _frames_to_pixels(jpegs: list[bytes] | np.ndarray):
    """JPEG frames at their stored size (or decoded LeRobot frames) -> (B, 3, H, W) float in [0, 1]."""
    from PIL import Image

    if isinstance(jpegs, np.ndarray):
        return uint8_to_pixels(jpegs)
    return uint8_to_pixels(np.stack([np.array(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]))


def build_target_cache(
    data_root_dir: str | os.PathLike,
    dataset_name: str,
    encoder,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Encode every primary-camera frame of a dataset once; resumable, fingerprinted.

    Args:
        data_root_dir: folder containing ``<dataset_name>/<version>/``.
        dataset_name: dataset to encode (all episodes, all splits).
        encoder: a frozen per-frame target encoder: a `stamo_vla.stamo.StaMoEncoder`, or one of
            `stamo_vla.adapter.target_encoders` (put in eval mode here).
        out_dir: cache directory (default `default_cache_dir`).
        batch_size: frames per encoder call.
        overwrite: start over when an existing cache does not match instead of refusing.
        device: torch device for the encoder.

    Returns:
        The cache directory.
    """
    check_positive_int("batch_size", batch_size)
    out = Path(out_dir) if out_dir else default_cache_dir(data_root_dir, dataset_name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset_name": dataset_name,
        "dataset_fingerprint": dataset_fingerprint(resolve_dataset_dir(data_root_dir, dataset_name)),
        **target_facts(encoder),
        "image_source": IMAGE_SOURCE,
    }
    _start_cache(out, manifest, overwrite, data_root_dir, dataset_name)
    cache = TargetCache(out, manifest)
    encoder = encoder.to(device).eval().requires_grad_(False)
    identities = EpisodeIdentities(f"dataset '{dataset_name}' under {data_root_dir}")
    for ep in iter_episodes(data_root_dir, dataset_name, "train", decode_images=False):
        identity = identities.add(ep)
        path = cache.shard_path(identity)
        if path.is_file():
            problem = shard_problem(path, len(ep["image"]))
            if problem is None:
                continue  # finished by an earlier (interrupted) run
            warnings.warn(f"StaMo target cache: {problem}; encoding that episode again.", stacklevel=2)
        states = _encode_frames(encoder, ep["image"], batch_size, device)
        check_finite(states, f"{path} (episode '{identity}', not written)")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(
            {"states": states},
            path,
            metadata={
                "episode_id": identity,
                "file_path": ep["file_path"],
                "num_steps": str(len(ep["image"])),
            },
        )
    return out


def _start_cache(
    out: Path, manifest: dict, overwrite: bool, data_root_dir: str | os.PathLike, dataset_name: str
) -> None:
    """Write `manifest` into `out`: kept when it matches the cache there (a resumed build), the old cache
    removed when it does not and `overwrite` is set, else refused naming what differs.

    Args:
        out: the cache directory.
        manifest: the manifest of the cache being built.
        overwrite: remove a cache that does not match instead of refusing.
        data_root_dir: the dataset's root, for the rebuild command in the error.
        dataset_name: the dataset, for the rebuild command in the error.
    """
    import shutil

    if (out / "manifest.json").is_file():
        existing = read_manifest(out)
        if existing != manifest:
            if not overwrite:
                _check_manifest(existing, manifest, out, data_root_dir, dataset_name)
                raise StaleTargetCacheError(  # differs only in keys _check_manifest does not name
                    f"StaMo target cache '{out}' has manifest {existing}, expected {manifest}. "
                    + _rebuild_hint(out, data_root_dir, dataset_name)
                )
            shutil.rmtree(out)
    write_json_atomic(out / "manifest.json", manifest)


def _encode_frames(
    encoder: Any, frames: list[bytes] | np.ndarray, batch_size: int, device: str
) -> np.ndarray:
    """(T, ...) float32 states of one episode's frames, `batch_size` frames per encoder call."""
    import torch

    states = []
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            pixels = _frames_to_pixels(frames[i : i + batch_size]).to(device)
            states.append(encoder.encode(pixels).float().cpu().numpy())
    return np.concatenate(states).astype(np.float32)
