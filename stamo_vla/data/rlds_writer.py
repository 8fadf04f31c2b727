"""Write LIBERO-style RLDS datasets (`modified_libero_rlds` spec) that plain tfds can read.

Layout written: ``<data_root_dir>/<dataset_name>/<version>/{dataset_info.json, features.json,
<dataset_name>-train.tfrecord-*}``, the layout upstream OpenVLA / OFT loaders expect.

Collection is incremental and resumable through a staging directory
``<data_root_dir>/<dataset_name>/.staging-<version>/``: each finished episode is written there atomically as
one ``.npz`` (images already JPEG-encoded, so staging is about as small as the final dataset and needs no
tensorflow). An interrupted collection keeps every finished episode; a resumed one skips episodes whose
``file_path`` is already staged. `RLDSShardWriter.finalize()` (tensorflow, parent process only) builds the
tfds dataset from all staged episodes and swaps it in atomically; it may be called again after more episodes
arrive.

Episodes are written in a seeded interleaved order (`write_order_key`), not in arrival order: a collection runs
task by task, so arrival order would make ``train[95%:]`` the last episodes of the last task, and a validation
split that measures one task. The released LIBERO data is hash-shuffled by its tfds build the same way. The order
depends only on the staged episodes and the seed, so a resumed collection writes the same dataset.

Episode input (numpy), per interfaces.md::

    {"image": (T,256,256,3) uint8 upright, "wrist_image": same, "state": (T,8) f32, "joint_state": (T,7) f32,
     "action": (T,7) f32 raw env actions or all-NaN (action-free), "language_instruction": str, "file_path": str}
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from stamo_vla.data import spec
from stamo_vla.data.episodes import CONTENT_FIELDS, episode_id
from stamo_vla.data.tf_setup import import_tfds
from stamo_vla.fileio import atomic_dir, atomic_path, read_json, write_json_atomic

_STAGED_RE = re.compile(r"^ep-(\d{6})-([0-9a-f]{16})\.npz$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def validate_episode(episode: dict) -> int:
    """Check an episode dict against the input format; return its length T.

    Raises:
        ValueError: naming the field, what was received and what is expected.
    """
    missing = [k for k in (*spec.EPISODE_ARRAYS, *spec.EPISODE_TEXT) if k not in episode]
    if missing:
        raise ValueError(f"episode is missing fields {missing}; got keys {sorted(episode)}")
    length = None
    for key, (shape, dtype) in spec.EPISODE_ARRAYS.items():
        arr = np.asarray(episode[key])
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
            raise ValueError(
                f"episode['{key}'] has shape {arr.shape}; expected (T, {', '.join(map(str, shape))})"
            )
        if dtype is np.uint8 and arr.dtype != np.uint8:
            raise ValueError(f"episode['{key}'] has dtype {arr.dtype}; expected uint8 RGB")
        if length is None:
            length = arr.shape[0]
        elif arr.shape[0] != length:
            raise ValueError(
                f"episode['{key}'] has {arr.shape[0]} steps but 'image' has {length}; all must match"
            )
    if not length:
        raise ValueError("episode has 0 steps; an episode needs at least one step")
    check_finite(episode)
    for key in spec.EPISODE_TEXT:
        if not isinstance(episode[key], str) or not episode[key]:
            raise ValueError(f"episode['{key}'] must be a non-empty str; got {episode[key]!r}")
    return int(length)


def check_finite(episode: dict) -> None:
    """No NaN or inf in the numeric fields, except an all-NaN ``action`` (an action-free episode)."""
    for key in ("state", "joint_state", "action"):
        values = np.asarray(episode[key], dtype=np.float32)
        bad = ~np.isfinite(values)
        if key == "action" and np.isnan(values).all():
            continue
        if bad.any():
            steps = np.unique(np.nonzero(bad)[0])[:5].tolist()
            partly = " (partly NaN)" if key == "action" and np.isnan(values).any() else ""
            hint = ", or all-NaN for an action-free episode" if key == "action" else ""
            raise ValueError(
                f"episode['{key}'] holds {int(bad.sum())} non-finite values (NaN/inf) at steps {steps}{partly}; "
                f"every value must be finite{hint}"
            )


def _episode_key(file_path: str) -> str:
    return hashlib.sha1(file_path.encode()).hexdigest()[:16]


def _order_key(episode_key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{episode_key}".encode()).digest()


def write_order_key(file_path: str, seed: int = 0) -> bytes:
    """Sort key of an episode in the written dataset: a seeded hash of its ``file_path`` (a uniform shuffle)."""
    return _order_key(_episode_key(file_path), seed)


def _encode_jpegs(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode frames into one flat byte buffer plus offsets (npz needs no pickling this way)."""
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _split_jpegs(flat: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    data = flat.tobytes()
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def load_staged_episode(path: str | os.PathLike) -> dict:
    """Read a staged episode: images as lists of JPEG bytes, arrays as numpy, text as str."""
    with np.load(path, allow_pickle=False) as z:
        ep = {k: z[k] for k in ("state", "joint_state", "action")}
        for cam in ("image", "wrist_image"):
            ep[cam] = _split_jpegs(z[f"{cam}_jpeg"], z[f"{cam}_offsets"])
        for key in spec.EPISODE_TEXT:
            ep[key] = str(z[key])
    return ep


def episode_to_example(ep: dict) -> dict:
    """Turn a staged episode into the nested dict the tfds features encode (reward 1 on the last step)."""
    length = len(ep["image"])
    steps = []
    for t in range(length):
        last = t == length - 1
        steps.append(
            {
                "observation": {
                    "image": ep["image"][t],
                    "wrist_image": ep["wrist_image"][t],
                    "state": ep["state"][t].astype(np.float32),
                    "joint_state": ep["joint_state"][t].astype(np.float32),
                },
                "action": ep["action"][t].astype(np.float32),
                "discount": np.float32(1.0),
                "reward": np.float32(1.0 if last else 0.0),
                "is_first": t == 0,
                "is_last": last,
                "is_terminal": last,
                "language_instruction": ep["language_instruction"],
            }
        )
    return {"steps": steps, "episode_metadata": {"file_path": ep["file_path"]}}


class RLDSShardWriter:
    """Incremental, resumable RLDS writer: stage episodes as they finish, build the tfds dataset at the end.

    Example::

        writer = RLDSShardWriter(root, "libero_spatial_scripted")
        for episode in episodes:
            if not writer.has_episode(episode["file_path"]):
                writer.add_episode(episode)
        writer.finalize()  # tensorflow; parent process only

    Args:
        data_root_dir: directory holding datasets (the upstream ``--data_root_dir``).
        dataset_name: tfds name, lower snake case (the upstream ``--dataset_name``).
        version: tfds version directory, ``"1.0.0"`` like upstream.
        jpeg_quality: JPEG quality of the stored images (95 = tf.io.encode_jpeg's default).
        order_seed: seed of the order episodes are written in (`write_order_key`).
    """

    def __init__(
        self,
        data_root_dir: str | os.PathLike,
        dataset_name: str,
        version: str = spec.DEFAULT_VERSION,
        jpeg_quality: int = spec.JPEG_QUALITY,
        order_seed: int = 0,
    ) -> None:
        if not _NAME_RE.match(dataset_name):
            raise ValueError(
                f"dataset_name={dataset_name!r} is not a valid tfds name; use lower snake case "
                "starting with a letter, e.g. 'libero_spatial_no_noops'"
            )
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            raise ValueError(f"version={version!r} must look like '1.0.0'")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={jpeg_quality} must be in [1, 100]")
        self.data_root_dir = Path(data_root_dir)
        self.dataset_name = dataset_name
        self.version = version
        self.jpeg_quality = jpeg_quality
        self.order_seed = order_seed
        self.staging_dir = self.data_root_dir / dataset_name / f".staging-{version}"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._staged: dict[str, Path] = {}  # episode key -> staged file
        for path in sorted(self.staging_dir.iterdir()):
            m = _STAGED_RE.match(path.name)
            if m:
                self._staged[m.group(2)] = path

    @property
    def dataset_dir(self) -> Path:
        """``<data_root_dir>/<dataset_name>/<version>``, where `finalize` writes."""
        return self.data_root_dir / self.dataset_name / self.version

    def __len__(self) -> int:
        return len(self._staged)

    def has_episode(self, file_path: str) -> bool:
        """Whether an episode with this ``file_path`` is already staged (so a resumed run can skip it)."""
        return _episode_key(file_path) in self._staged

    def staged_files(self) -> list[Path]:
        """Staged episode files in arrival order."""
        return sorted(self._staged.values())

    def add_episode(self, episode: dict) -> bool:
        """Validate and stage one finished episode atomically.

        Returns:
            True if written, False if this very episode was already staged (a resumed run).

        Raises:
            ValueError: another episode is staged under the same ``file_path`` (upstream's LIBERO builder stores one
                file path for all demos of a task; here each episode needs its own).
        """
        validate_episode(episode)
        key = _episode_key(episode["file_path"])
        if key in self._staged:
            with np.load(self._staged[key], allow_pickle=False) as z:
                staged = {k: z[k] for k in (*CONTENT_FIELDS, *spec.EPISODE_TEXT)}
            if episode_id(staged) != episode_id(episode):
                raise ValueError(
                    f"episode file_path {episode['file_path']!r} is already staged ({self._staged[key].name}) for "
                    "another episode (other states or actions): every episode needs its own file_path, or one "
                    "would be dropped. Give each its own, e.g. '<hdf5 file>/demo_<index>'."
                )
            return False
        arrays: dict[str, np.ndarray] = {
            k: np.asarray(episode[k], dtype=np.float32) for k in ("state", "joint_state", "action")
        }
        for cam in ("image", "wrist_image"):
            arrays[f"{cam}_jpeg"], arrays[f"{cam}_offsets"] = _encode_jpegs(
                np.asarray(episode[cam]), self.jpeg_quality
            )
        for k in spec.EPISODE_TEXT:
            arrays[k] = np.asarray(episode[k])
        seq = max((int(_STAGED_RE.match(p.name).group(1)) for p in self._staged.values()), default=-1) + 1
        path = self.staging_dir / f"ep-{seq:06d}-{key}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        self._staged[key] = path
        return True

    def finalize(self, remove_staging: bool = False) -> Path:
        """Build ``<root>/<name>/<version>/`` from every staged episode (needs tensorflow; parent process only).

        The previous build, if any, is replaced atomically, so readers never see a half-written dataset.

        Args:
            remove_staging: delete the staging directory afterwards (no further resuming).

        Returns:
            The dataset directory.
        """
        files = self.staged_files()
        if not files:
            raise ValueError(
                f"no staged episodes under {self.staging_dir}; add episodes with add_episode() before finalize()"
            )
        # staged files are named by their file_path's key (`write_order_key` of each episode)
        order = sorted(files, key=lambda p: _order_key(_STAGED_RE.match(p.name).group(2), self.order_seed))
        with atomic_dir(self.dataset_dir, kind="rlds_dataset", overwrite=True) as out:
            _build_tfds(order, self.dataset_name, self.version, out)
        if remove_staging:
            shutil.rmtree(self.staging_dir, ignore_errors=True)
        return self.dataset_dir


def _build_tfds(files: list[Path], name: str, version: str, out_dir: Path) -> None:
    """Run a tfds GeneratorBasedBuilder over staged episodes; move its version dir's files into `out_dir`."""
    _, tfds = import_tfds("writing an RLDS dataset")

    def generate() -> Iterator[tuple[str, dict]]:
        for i, path in enumerate(files):
            yield f"{i:06d}", episode_to_example(load_staged_episode(path))

    with tfds.core.registered.skip_registration():

        class _StagedRLDS(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version(version)
            RELEASE_NOTES = {version: "Written by stamo_vla.data.rlds_writer."}

            def _info(self):
                # DatasetInfo(builder=self) instead of dataset_info_from_configs: the latter needs the
                # builder to live in a package directory (docs/reference/environment.md §2).
                return tfds.core.DatasetInfo(
                    builder=self,
                    description="LIBERO-style RLDS episodes (modified_libero_rlds feature spec).",
                    features=spec.tfds_features(),
                    # write in the given (seeded) order, so the 95%/5% split is reproducible; the flag is cleared
                    # afterwards (`_allow_shuffled_reads`) so shuffled, interleaved reads are allowed
                    disable_shuffling=True,
                )

            def _split_generators(self, dl_manager):
                return {"train": generate()}

            def _generate_examples(self):  # required abstract method; splits come from generate()
                return generate()

        _StagedRLDS.name = name
        # tfds resolves a dotted module's source path through `importlib_resources`, which is not a
        # dependency here; a dot-free module name makes it fall back to `inspect.getfile`.
        _StagedRLDS.__module__ = "stamo_vla_rlds_writer"

    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir.parent) as build_root:
        builder = _StagedRLDS(data_dir=build_root)
        # tfds prints "Downloading and preparing ..." about its temporary build dir: noise for our users
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(
                download_dir=os.path.join(build_root, "downloads"),
                download_config=tfds.download.DownloadConfig(
                    compute_stats=tfds.download.ComputeStatsMode.SKIP
                ),
            )
        built = Path(build_root) / name / version
        for item in built.iterdir():
            shutil.move(str(item), out_dir / item.name)
    _allow_shuffled_reads(out_dir)


def _allow_shuffled_reads(dataset_dir: Path) -> None:
    """Drop ``disableShuffling`` from ``dataset_info.json``, so the dataset reads like ``modified_libero_rlds``.

    tfds refuses ``shuffle_files=True`` and ``interleave_cycle_length != 1`` on a dataset marked ordered, and
    upstream OpenVLA's trainer reads exactly that way (dlimp ``from_rlds(shuffle=True)`` + interleaving). The
    records stay in the written order, so a read with ``shuffle_files=False`` (ours) still sees that order.
    """
    info_file = dataset_dir / "dataset_info.json"
    info = read_json(info_file, "Write the dataset again.")
    if info.pop("disableShuffling", None) is not None:
        write_json_atomic(info_file, info)


def write_rlds_dataset(
    episodes: Iterable[dict],
    data_root_dir: str | os.PathLike,
    dataset_name: str,
    version: str = spec.DEFAULT_VERSION,
    jpeg_quality: int = spec.JPEG_QUALITY,
    keep_staging: bool = False,
) -> Path:
    """Write a complete RLDS dataset from an iterable of episode dicts (see module docstring).

    An episode given twice is written once, another episode under a ``file_path`` already used is refused;
    episodes left staged by an interrupted earlier call for the same name and version are included (resume).
    Needs tensorflow (parent process only).

    Args:
        episodes: episode dicts in the input format.
        data_root_dir: directory holding datasets.
        dataset_name: tfds name (lower snake case).
        version: tfds version directory.
        jpeg_quality: JPEG quality of stored images.
        keep_staging: keep the per-episode staging files (to append more episodes later).

    Returns:
        ``<data_root_dir>/<dataset_name>/<version>``.
    """
    writer = RLDSShardWriter(data_root_dir, dataset_name, version, jpeg_quality)
    for episode in episodes:
        writer.add_episode(episode)
    return writer.finalize(remove_staging=not keep_staging)
