"""Read LIBERO RLDS datasets with tensorflow-datasets, upstream conventions, numpy out.

Upstream convention (openvla `finetune.py`): ``--data_root_dir`` is the folder that *contains*
``<dataset_name>/<version>/``; ``--dataset_name`` picks one. The wrong level is the most common setup error
(openvla #120/#205), so `resolve_dataset_dir` says what it found and what to pass instead.

tensorflow is imported lazily (CPU-only, quiet) inside the functions that read records; `list_datasets`,
`resolve_dataset_dir` and `dataset_fingerprint` are file-system only.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stamo_vla.data import spec
from stamo_vla.data.tf_setup import import_tfds
from stamo_vla.fileio import read_json

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class DatasetNotFoundError(FileNotFoundError):
    """The data_root_dir / dataset_name pair does not point at an RLDS dataset."""


def _versions(dataset_dir: Path) -> list[Path]:
    if not dataset_dir.is_dir():
        return []
    found = [
        p for p in dataset_dir.iterdir() if _VERSION_RE.match(p.name) and (p / "dataset_info.json").is_file()
    ]
    return sorted(found, key=lambda p: tuple(int(x) for x in p.name.split(".")))


def list_datasets(data_root_dir: str | os.PathLike) -> list[str]:
    """Names of the RLDS datasets directly under `data_root_dir` (those with ``<name>/<version>/dataset_info.json``)."""
    root = Path(data_root_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and _versions(p))


def resolve_dataset_dir(
    data_root_dir: str | os.PathLike, dataset_name: str, version: str | None = None
) -> Path:
    """Return ``<data_root_dir>/<dataset_name>/<version>`` (latest version unless given), or explain what is wrong.

    Args:
        data_root_dir: the folder that holds the dataset folders.
        dataset_name: the dataset's folder name.
        version: the version folder (None: the latest).

    Raises:
        DatasetNotFoundError: the root is missing, is the wrong level, or has no such dataset; the message
            lists the datasets found and the arguments to use instead.
    """
    root = Path(data_root_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"data_root_dir '{root}' does not exist or is not a directory. Pass the folder that contains "
            f"'{dataset_name}/<version>/' (e.g. .../modified_libero_rlds)."
        )
    versions = _versions(root / dataset_name)
    if versions:
        if version is None:
            return versions[-1]
        for v in versions:
            if v.name == version:
                return v
        raise DatasetNotFoundError(
            f"dataset '{dataset_name}' under '{root}' has versions {[v.name for v in versions]}, not '{version}'"
        )
    found = list_datasets(root)
    hint = ""
    if (root / "dataset_info.json").is_file() and _VERSION_RE.match(root.name):
        hint = (
            f" data_root_dir looks like a version directory: pass --data_root_dir '{root.parent.parent}' "
            f"--dataset_name '{root.parent.name}'."
        )
    elif _versions(root):
        hint = (
            f" data_root_dir looks like a dataset directory itself: pass --data_root_dir '{root.parent}' "
            f"--dataset_name '{root.name}'."
        )
    elif not found:
        nested = sorted({str(p.parent.parent.parent) for p in root.glob("*/*/*/dataset_info.json")})
        if nested:
            hint = f" Datasets exist one level down: pass one of {nested} as data_root_dir."
    else:
        close = difflib.get_close_matches(dataset_name, found, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DatasetNotFoundError(
        f"no RLDS dataset '{dataset_name}' under data_root_dir '{root}'. Datasets found there: {found}.{hint}"
    )


def dataset_fingerprint(dataset_dir: str | os.PathLike) -> str:
    """sha256 over the dataset's spec files and the names and sizes of its record files (cheap, no TF).

    Files we add beside the data (statistics caches) are not part of it.
    """
    d = Path(dataset_dir)
    h = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        path = d / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    for path in sorted(p for p in d.iterdir() if ".tfrecord-" in p.name or ".array_record-" in p.name):
        h.update(f"{path.name}:{path.stat().st_size}\n".encode())
    return h.hexdigest()


def _feature_paths(feature, prefix: str = "") -> dict[str, object]:
    """Flatten a tfds FeaturesDict (descending into nested `Dataset`s) to {"a/b/c": leaf feature}."""
    inner = getattr(feature, "feature", None)  # tfds.features.Dataset / Sequence wrap one feature
    if hasattr(feature, "items") and callable(feature.items):
        out: dict[str, object] = {}
        for key, sub in feature.items():
            out.update(_feature_paths(sub, f"{prefix}{key}/"))
        return out
    if inner is not None and hasattr(inner, "items"):
        return _feature_paths(inner, prefix)
    return {prefix.rstrip("/"): feature}


def warn_if_ordered(dataset_dir: Path) -> bool:
    """Warn when ``dataset_info.json`` carries ``disableShuffling`` (left by older versions of our writer).

    tfds then refuses shuffled, interleaved reads, which is how upstream OpenVLA's trainer reads every dataset, so
    the dataset works here but not there. Returns whether the flag is set.
    """
    try:
        ordered = bool(read_json(dataset_dir / "dataset_info.json", "").get("disableShuffling"))
    except (OSError, ValueError, AttributeError):
        return False  # a missing or damaged info file is reported by tfds, with its own message
    if ordered:
        warnings.warn(
            f"{dataset_dir}/dataset_info.json sets disableShuffling (written by an older stamo_vla): it reads here, "
            "but upstream OpenVLA's trainer refuses it (tfds allows no shuffled reads of an ordered dataset). Rerun "
            "the same `stamo-vla collect` command that wrote it: it rebuilds the dataset from its staged episodes "
            "without the flag.",
            stacklevel=3,
        )
    return ordered


def open_builder(data_root_dir: str | os.PathLike, dataset_name: str, version: str | None = None):
    """Open a dataset as a tfds ReadOnlyBuilder and check it has every feature of the LIBERO spec.

    Args:
        data_root_dir: the folder that holds the dataset folders.
        dataset_name: the dataset's folder name.
        version: the version folder (None: the latest).

    Raises:
        DatasetNotFoundError: see `resolve_dataset_dir`.
        ValueError: a required feature is missing or has the wrong shape (named in the message).
    """
    dataset_dir = resolve_dataset_dir(data_root_dir, dataset_name, version)
    warn_if_ordered(dataset_dir)
    _, tfds = import_tfds("reading RLDS datasets")
    builder = tfds.builder_from_directory(str(dataset_dir))
    paths = _feature_paths(builder.info.features)
    missing = [k for k in spec.REQUIRED_FEATURES if k not in paths]
    if missing:
        raise ValueError(
            f"dataset '{dataset_name}' at {dataset_dir} lacks required features {missing}; it has "
            f"{sorted(paths)}. Expected the modified_libero_rlds spec (see stamo_vla.data.spec)."
        )
    for key, shape in spec.REQUIRED_FEATURES.items():
        got = tuple(getattr(paths[key], "shape", ()))
        if key.endswith("image") and len(got) == 3:
            continue  # any resolution is accepted; frames are resized on load
        if got != shape:
            raise ValueError(f"dataset '{dataset_name}' feature '{key}' has shape {got}; expected {shape}")
    return builder


def shard_split(builder, split: str, shard: tuple[int, int] | None) -> str | None:
    """The tfds split string for shard ``(index, count)`` of `split`: contiguous, disjoint, covering blocks.

    Args:
        builder: the dataset's tfds builder (its split sizes).
        split: a tfds split spec, e.g. ``train`` or ``train[:90%]``.
        shard: ``(index, count)``, or None for the whole split.

    Returns None when the shard is empty (more shards than episodes).
    """
    if shard is None:
        return split
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard={shard} must satisfy 0 <= index < count")
    _, tfds = import_tfds("reading RLDS datasets")
    absolute = tfds.core.ReadInstruction.from_spec(split).to_absolute(dict(builder.info.splits.items()))
    if len(absolute) != 1:
        raise ValueError(f"split={split!r} must be one contiguous slice of one split to shard it")
    name = absolute[0].splitname
    start = absolute[0].from_ or 0  # tfds uses None for "from the start" / "to the end"
    stop = builder.info.splits[name].num_examples if absolute[0].to is None else absolute[0].to
    bounds = np.linspace(start, stop, count + 1).round().astype(int)
    lo, hi = int(bounds[index]), int(bounds[index + 1])
    return None if hi <= lo else f"{name}[{lo}:{hi}]"


def iter_episodes(
    data_root_dir: str | os.PathLike,
    dataset_name: str,
    split: str = "train",
    *,
    decode_images: bool = True,
    load_images: bool = True,
    shard: tuple[int, int] | None = None,
    shuffle_episodes: int = 0,
    seed: int = 0,
    num_parallel_reads: int = 1,
) -> Iterator[dict]:
    """Yield episodes as numpy dicts, in stored order unless `shuffle_episodes` > 0.

    Each episode: ``image``/``wrist_image`` (T,H,W,3) uint8 upright (or lists of JPEG bytes when
    ``decode_images=False``; absent when ``load_images=False``), ``state`` (T,8), ``joint_state`` (T,7),
    ``action`` (T,7) float32 raw (NaN for action-free episodes), ``language_instruction`` str,
    ``file_path`` str, ``has_action`` bool.

    Args:
        data_root_dir: folder containing ``<dataset_name>/<version>/``.
        dataset_name: dataset to read.
        split: a tfds split string: ``"train"`` (all episodes), ``"train[:95%]"``, ``"train[95%:]"``...
        decode_images: decode JPEG frames (False keeps the encoded bytes: decode only the frames you use).
        load_images: False skips the image features entirely (statistics need none).
        shard: ``(index, count)``: read only that contiguous block of the split's episodes.
        shuffle_episodes: episode shuffle buffer (0 = stored order).
        seed: seed of the episode shuffle.
        num_parallel_reads: record files read in parallel.
    """
    builder = open_builder(data_root_dir, dataset_name)
    sub_split = shard_split(builder, split, shard)
    if sub_split is None:
        return
    ds = _episode_dataset(
        builder,
        sub_split,
        decode_images=decode_images,
        load_images=load_images,
        shuffle_episodes=shuffle_episodes,
        seed=seed,
        num_parallel_reads=num_parallel_reads,
    )
    yield from _numpy_episodes(ds, builder, decode_images=decode_images, load_images=load_images)


def _episode_dataset(
    builder: Any,
    sub_split: str,
    *,
    decode_images: bool,
    load_images: bool,
    shuffle_episodes: int,
    seed: int,
    num_parallel_reads: int,
) -> Any:
    """The tf.data pipeline of `iter_episodes`: one flat element per episode, its steps as (T, ...) tensors.

    Args:
        builder: the dataset's tfds builder (`open_builder`).
        sub_split: the tfds split to read (`shard_split`).
        decode_images: decode JPEG frames.
        load_images: read the image features at all.
        shuffle_episodes: episode shuffle buffer (0 = stored order).
        seed: seed of the episode shuffle.
        num_parallel_reads: record files read in parallel.
    """
    tf, tfds = import_tfds("reading RLDS datasets")
    decoders = None
    if not (decode_images and load_images):
        skip = tfds.decode.SkipDecoding()
        decoders = {"steps": {"observation": {"image": skip, "wrist_image": skip}}}
    read_config = tfds.ReadConfig(
        interleave_cycle_length=max(1, num_parallel_reads), shuffle_seed=seed, try_autocache=False
    )
    ds = builder.as_dataset(split=sub_split, shuffle_files=False, decoders=decoders, read_config=read_config)

    def flatten(ep):
        # one record per episode; batching its steps gives (T, ...) tensors in one go
        steps = ep["steps"].batch(1 << 30).get_single_element()
        obs = steps["observation"]
        out = {
            "state": obs["state"],
            "joint_state": obs["joint_state"],
            "action": steps["action"],
            "language_instruction": steps["language_instruction"][0],
            "file_path": ep["episode_metadata"]["file_path"],
        }
        if load_images:
            out["image"], out["wrist_image"] = obs["image"], obs["wrist_image"]
        return out

    options = tf.data.Options()
    # bounded tf.data thread pools: upstream's 16+ threads per stage is a main source of host-RAM growth
    # (openvla #4/#39/#167); here each reader uses about `num_parallel_reads` threads
    options.threading.private_threadpool_size = max(2, num_parallel_reads)
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options).map(flatten, num_parallel_calls=1, deterministic=True)
    if shuffle_episodes > 0:
        ds = ds.shuffle(shuffle_episodes, seed=seed, reshuffle_each_iteration=False)
    return ds.prefetch(1)


def _numpy_episodes(ds: Any, builder: Any, *, decode_images: bool, load_images: bool) -> Iterator[dict]:
    """The episodes of `ds` as numpy dicts (strings decoded, ``has_action`` set); a record file that cannot be
    read raises a ValueError naming the dataset and the fix."""
    tf, _ = import_tfds("reading RLDS datasets")
    episodes = ds.as_numpy_iterator()
    while True:
        try:
            ep = next(episodes)
        except StopIteration:
            return
        except tf.errors.OpError as err:  # DataLossError for a truncated record file, ...
            files = sorted(p.name for p in Path(builder.data_dir).glob("*.tfrecord*"))
            raise ValueError(
                f"RLDS dataset {builder.data_dir}: a record file ({', '.join(files)}) cannot be read "
                f"({type(err).__name__}: {str(err.message).splitlines()[0]}); it is truncated or corrupt. Copy the "
                "dataset again, or rebuild it (`stamo-vla collect` resumes from its staging folder)."
            ) from err
        ep["language_instruction"] = ep["language_instruction"].decode()
        ep["file_path"] = ep["file_path"].decode()
        if load_images and not decode_images:
            ep["image"], ep["wrist_image"] = list(ep["image"]), list(ep["wrist_image"])
        ep["has_action"] = bool(len(ep["action"]) and not np.isnan(ep["action"]).all())
        yield ep
