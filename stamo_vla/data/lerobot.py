"""Read LeRobotDataset v3.0 directories (``lerobot/libero``, ``HuggingFaceVLA/libero``) as episode dicts, no TF.

Layout (LeRobot v3.0)::

    meta/info.json                      codebase_version, fps, features, data_path / video_path templates
    meta/stats.json                     per-feature statistics (not used for reading)
    meta/tasks.parquet                  task string -> task_index (v2.1: meta/tasks.jsonl)
    meta/episodes/chunk-*/file-*.parquet  one row per episode: length, data file, per-camera video file and
                                        [from_timestamp, to_timestamp) of the episode inside it
    data/chunk-*/file-*.parquet         one row per frame: observation.state, action, timestamp, frame_index,
                                        episode_index, index, task_index (+ image bytes in image datasets)
    videos/<camera>/chunk-*/file-*.mp4  one stream per camera, episodes back to back

Key mapping to our episode dicts (the same dicts `stamo_vla.data.rlds.iter_episodes` yields):

    image         observation.images.image (lerobot/libero, HuggingFaceVLA/libero), else
                  observation.images.agentview_image / observation.images.front
    wrist_image   observation.images.image2 (lerobot/libero, HuggingFaceVLA/libero), else
                  observation.images.wrist_image / observation.images.eye_in_hand_image
    state         observation.state (8: eef pos 3, axis-angle 3, gripper qpos 2)
    joint_state   observation.states.joint_state when present, else zeros (LIBERO's LeRobot sets have none)
    action        action (7: delta eef pos 3, delta rot 3, gripper -1 open / +1 close)
    language_instruction   the episode's task string (meta/tasks)
    file_path     ``episode_<episode_index:06d>``: the episode's unique key

Frames come out as stored: (T, H, W, 3) uint8, upright (both LIBERO LeRobot sets store the 180°-rotated,
upright frames of the OpenVLA RLDS data, as we do), at the stored size; the sample stream resizes them as the
RLDS path does (`resize_frame`). Videos are decoded with PyAV (extra ``lerobot``); the frame of a row is the
decoded frame nearest to ``from_timestamp + timestamp``, as LeRobot's own decoder picks it. With
``decode_images=False`` (the sample stream) frames are `LazyFrames`, decoded one at a time when a sample is
made (a seek to the previous key frame, at most two AV1 frames with LeRobot's g=2), so memory holds compressed
episodes as on the RLDS path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from stamo_vla.fileio import read_json
from stamo_vla.optional import require

log = logging.getLogger(__name__)

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
PRIMARY_CAMERAS = (
    "observation.images.image",
    "observation.images.agentview_image",
    "observation.images.front",
)
WRIST_CAMERAS = (
    "observation.images.image2",
    "observation.images.wrist_image",
    "observation.images.eye_in_hand_image",
)
STATE_KEY = "observation.state"
JOINT_STATE_KEY = "observation.states.joint_state"
ACTION_KEY = "action"
_SPLIT_RE = re.compile(r"^train(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a LeRobot dataset root (has ``meta/info.json``)."""
    return (Path(path) / INFO_PATH).is_file()


def resolve_lerobot_dir(data_root_dir: str | os.PathLike, dataset_name: str) -> Path:
    """The LeRobot dataset root: `data_root_dir` itself when it is one, else ``<data_root_dir>/<dataset_name>``.

    Raises:
        FileNotFoundError: neither is a LeRobot dataset; the message lists what was found.
    """
    root = Path(data_root_dir).expanduser()
    for candidate in (root, root / dataset_name):
        if is_lerobot_dataset(candidate):
            return candidate
    found = sorted(p.name for p in root.iterdir() if is_lerobot_dataset(p)) if root.is_dir() else []
    close = difflib.get_close_matches(dataset_name, found, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise FileNotFoundError(
        f"no LeRobot dataset at data_root_dir '{root}' (no {INFO_PATH}) nor at '{root / dataset_name}'. "
        f"Pass the dataset root (the folder holding meta/ and data/) or its parent with --dataset_names. "
        f"LeRobot datasets found under '{root}': {found}.{hint}"
    )


def lerobot_fingerprint(dataset_dir: str | os.PathLike) -> str:
    """sha256 over ``meta/info.json`` and the names and sizes of the data, episode and video files (cheap)."""
    d = Path(dataset_dir)
    h = hashlib.sha256((d / INFO_PATH).read_bytes())
    for sub in ("meta/episodes", "data", "videos"):
        for path in sorted((d / sub).rglob("*")):
            if path.is_file():
                h.update(f"{path.relative_to(d)}:{path.stat().st_size}\n".encode())
    return h.hexdigest()


def split_range(split: str, num_episodes: int) -> tuple[int, int]:
    """Episode range ``[lo, hi)`` of a tfds-style split string (``train``, ``train[:95%]``, ``train[5:10]``).

    Percent boundaries round to the closest episode, as tfds does, so RLDS and LeRobot copies of one dataset
    split alike.
    """
    match = _SPLIT_RE.match(split.replace(" ", ""))
    if match is None:
        raise ValueError(
            f"split={split!r} is not supported for LeRobot datasets; use 'train', 'train[:P%]', "
            "'train[P%:]' or 'train[a:b]'"
        )

    def bound(text: str, pct: str, default: int) -> int:
        if not text:
            return default
        value = int(round(float(text) * num_episodes / 100)) if pct else int(text)
        return min(max(value + num_episodes if value < 0 else value, 0), num_episodes)

    lo_text, lo_pct, hi_text, hi_pct = match.groups(default="")
    return bound(lo_text, lo_pct, 0), bound(hi_text, hi_pct, num_episodes)


def shard_range(lo: int, hi: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Block ``index`` of ``count`` contiguous, disjoint, covering blocks of ``[lo, hi)`` (as the RLDS reader).

    Args:
        lo: the first index of the range.
        hi: one past its last index.
        shard: (index, count) of the block to take, or None for the whole range.
    """
    if shard is None:
        return lo, hi
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard={shard} must satisfy 0 <= index < count")
    bounds = np.linspace(lo, hi, count + 1).round().astype(int)
    return int(bounds[index]), int(bounds[index + 1])


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: antialiased Lanczos-3, then round and clip, always (as RLDS).

    The RLDS path runs ``tf.image.resize(method="lanczos3", antialias=True)``. PIL's LANCZOS is the same kernel
    with the same support scaling and weight normalization; run per channel on float ("F") images it keeps
    float precision between its two passes (its 8-bit mode rounds in between), so it agrees with TF up to float
    rounding: within 1 level, on under 0.1% of pixels (tests/data/test_lerobot_reader.py), without TF.
    """
    from PIL import Image

    channels = [
        np.asarray(
            Image.fromarray(frame[..., c].astype(np.float32), mode="F").resize((size, size), Image.LANCZOS)
        )
        for c in range(frame.shape[-1])
    ]
    return np.clip(np.round(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def _column(table, key: str) -> np.ndarray:
    """A numeric (list) column as an (N, D) or (N,) numpy array."""
    col = table.column(key).combine_chunks()
    if hasattr(col, "flatten") and hasattr(col.type, "value_type"):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def _decode_image_cell(cell) -> np.ndarray:
    """One ``{"bytes", "path"}`` image cell of a parquet image column -> (H, W, 3) uint8."""
    import io

    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class LeRobotReader:
    """Read-only view of one LeRobot v3.0 dataset directory: metadata, then episodes on demand.

    Args:
        root: the dataset root (holding ``meta/info.json``).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        fix = "Copy the dataset again (meta/info.json is written by LeRobot or `stamo-vla convert`)."
        self.info = read_json(
            self.root / INFO_PATH, fix, name=f"LeRobot dataset '{self.root}' meta/info.json"
        )
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise ValueError(
                f"LeRobot dataset '{self.root}' has codebase_version {version!r}; this reader reads v3.0. "
                "Convert it with LeRobot's `python -m lerobot.scripts.convert_dataset_v21_to_v30` first."
            )
        self.features: dict = self.info.get("features", {})
        self.fps = float(self.info["fps"])
        self.camera_keys = {
            "image": self._camera(PRIMARY_CAMERAS, required=True),
            "wrist_image": self._camera(WRIST_CAMERAS, required=False),
        }
        if self.camera_keys["wrist_image"] is None:
            log.warning(
                "LeRobot dataset '%s' has no wrist camera (%s); wrist_image frames are black",
                self.root,
                WRIST_CAMERAS,
            )
        for key in (STATE_KEY, ACTION_KEY):
            if key not in self.features:
                raise ValueError(
                    f"LeRobot dataset '{self.root}' has no '{key}' feature; it has {sorted(self.features)}. "
                    f"Expected LIBERO's keys: {STATE_KEY} (8-D), {ACTION_KEY} (7-D)."
                )
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self._data_cache: tuple[Path, object] | None = None

    def _camera(self, candidates: tuple[str, ...], required: bool) -> str | None:
        for key in candidates:
            if self.features.get(key, {}).get("dtype") in ("video", "image"):
                return key
        if required:
            cams = [k for k, v in self.features.items() if v.get("dtype") in ("video", "image")]
            raise ValueError(
                f"LeRobot dataset '{self.root}' has none of the camera keys {list(candidates)}; its cameras "
                f"are {cams}. Rename the primary camera to {candidates[0]}."
            )
        return None

    def _read_tasks(self) -> dict[int, str]:
        pq = require("pyarrow.parquet", "reading LeRobot datasets")
        path = self.root / "meta/tasks.parquet"
        if path.is_file():
            table = pq.read_table(path)
            names = [n for n in table.column_names if n != "task_index"]
            text = next((n for n in ("task", "__index_level_0__", *names) if n in table.column_names), None)
            return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))
        jsonl = self.root / "meta/tasks.jsonl"
        if jsonl.is_file():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            return {int(r["task_index"]): r["task"] for r in rows}
        raise FileNotFoundError(f"LeRobot dataset '{self.root}' has no meta/tasks.parquet (nor tasks.jsonl)")

    def _read_episodes(self) -> list[dict]:
        pq = require("pyarrow.parquet", "reading LeRobot datasets")
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"LeRobot dataset '{self.root}' has no meta/episodes/chunk-*/file-*.parquet; copy it again"
            )
        rows: list[dict] = []
        for path in files:
            schema = pq.read_schema(path)
            columns = [n for n in schema.names if not n.startswith("stats/")]
            rows += pq.read_table(path, columns=columns).to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        return rows

    def __len__(self) -> int:
        return len(self.episodes)

    def _data_table(self, meta: dict, load_images: bool):
        """The data file of an episode (the last one read is kept: episodes are stored in order)."""
        pq = require("pyarrow.parquet", "reading LeRobot datasets")
        path = self.root / self.info["data_path"].format(
            chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"]
        )
        key = (path, load_images)
        if self._data_cache is None or self._data_cache[0] != key:
            if not path.is_file():
                raise FileNotFoundError(f"LeRobot dataset '{self.root}': data file '{path}' is missing")
            skip = (
                set() if load_images else {k for k, v in self.features.items() if v.get("dtype") == "image"}
            )
            names = [n for n in pq.read_schema(path).names if n not in skip]
            self._data_cache = (key, pq.read_table(path, columns=names))
        return self._data_cache[1]

    def read_episode(self, position: int, load_images: bool = True, decode_images: bool = True) -> dict:
        """Episode at `position` (in episode_index order) as an episode dict (see the module docstring).

        ``decode_images=False`` gives `LazyFrames` (decoded per access) instead of arrays, so a shuffle buffer
        holding many episodes keeps them compressed, as the RLDS reader keeps JPEG bytes.

        Args:
            position: the episode's position in episode_index order.
            load_images: read the camera frames (False: actions, states and instructions only).
            decode_images: decode them now (False: `LazyFrames`).
        """
        meta = self.episodes[position]
        index = int(meta["episode_index"])
        table = self._data_table(meta, load_images)
        pc = require("pyarrow.compute", "reading LeRobot datasets")
        rows = table.filter(pc.equal(table.column("episode_index"), index))
        rows = rows.take(pc.sort_indices(rows.column("frame_index")))
        length = rows.num_rows
        if length != int(meta.get("length", length)) or length == 0:
            raise ValueError(
                f"LeRobot dataset '{self.root}': episode {index} has {length} rows in its data file, "
                f"meta/episodes says {meta.get('length')}; the dataset is incomplete"
            )
        task_index = int(rows.column("task_index")[0].as_py())
        ep = {
            "state": _column(rows, STATE_KEY).astype(np.float32),
            "action": _column(rows, ACTION_KEY).astype(np.float32),
            "joint_state": (
                _column(rows, JOINT_STATE_KEY).astype(np.float32)
                if JOINT_STATE_KEY in rows.column_names
                else np.zeros((length, 7), np.float32)
            ),
            "language_instruction": self.tasks.get(task_index, (meta.get("tasks") or [""])[0]),
            "file_path": f"episode_{index:06d}",
            "episode_index": index,
        }
        ep["has_action"] = bool(length and not np.isnan(ep["action"]).all())
        if load_images:
            timestamps = _column(rows, "timestamp").astype(np.float64).reshape(-1)
            for name, key in self.camera_keys.items():
                if key is not None:
                    ep[name] = self._frames(key, meta, rows, timestamps, decode_images)
            if ep.get("wrist_image") is None:
                ep["wrist_image"] = np.zeros(
                    (length, *self.features[self.camera_keys["image"]]["shape"]), np.uint8
                )
        return ep

    def _frames(self, key: str, meta: dict, rows, timestamps: np.ndarray, decode: bool):
        if self.features[key]["dtype"] == "image":
            cells = rows.column(key).to_pylist()
            frames = LazyFrames(len(cells), lambda idx: np.stack([_decode_image_cell(cells[i]) for i in idx]))
            return frames[:] if decode else frames
        path = self.root / self.info["video_path"].format(
            video_key=key,
            chunk_index=meta[f"videos/{key}/chunk_index"],
            file_index=meta[f"videos/{key}/file_index"],
        )
        times, fps = float(meta.get(f"videos/{key}/from_timestamp", 0.0)) + timestamps, self.fps
        frames = LazyFrames(len(times), lambda idx: decode_video_frames(path, times[idx], fps))
        return frames[:] if decode else frames


class LazyFrames(Sequence):
    """An episode's frames decoded on access: ``frames[t]`` is (H, W, 3) uint8, ``frames[a:b]`` (N, H, W, 3).

    Args:
        length: number of frames.
        decode: ascending frame indices -> their (N, H, W, 3) uint8 frames (one seek for a contiguous run).
    """

    def __init__(self, length: int, decode: Callable[[list[int]], np.ndarray]) -> None:
        self.length, self.decode = length, decode

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.decode(list(range(*index.indices(self.length))))
        if not -self.length <= index < self.length:
            raise IndexError(f"frame {index} of an episode with {self.length} frames")
        return self.decode([index % self.length])[0]


def decode_video_frames(path: str | os.PathLike, timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Frames of an MP4 nearest to `timestamps` (seconds, ascending) as (N, H, W, 3) uint8 RGB (PyAV).

    Args:
        path: the MP4 file.
        timestamps: the times (seconds, ascending) of the wanted frames.
        fps: the video's frame rate.

    Raises:
        FileNotFoundError: the video is missing.
        ValueError: a timestamp has no decoded frame within half a frame period (truncated video).
    """
    av = require("av", "decoding LeRobot videos")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot video '{path}' is missing; copy the dataset again")
    tolerance = 0.5 / fps
    try:
        times, frames = _decode_span(av, path, float(timestamps[0]), float(timestamps[-1]), tolerance)
    except av.FFmpegError as err:
        raise ValueError(
            f"LeRobot video '{path}' cannot be decoded ({err}); it is truncated or corrupt. Copy the dataset again."
        ) from err
    if not frames:
        raise ValueError(f"LeRobot video '{path}' has no frames near t={timestamps[0]:.3f}s; it is truncated")
    times_arr = np.asarray(times)
    nearest = np.abs(times_arr[None, :] - timestamps[:, None]).argmin(1)
    gap = np.abs(times_arr[nearest] - timestamps)
    if gap.max() > tolerance:
        bad = float(timestamps[int(gap.argmax())])
        raise ValueError(
            f"LeRobot video '{path}' has no frame within {tolerance:.4f}s of t={bad:.4f}s (nearest is "
            f"{gap.max():.4f}s away); the video is truncated or its timestamps do not match the data"
        )
    return np.stack([frames[i] for i in nearest])


def _decode_span(av, path: Path, first: float, last: float, tolerance: float) -> tuple[list, list]:
    """(times, RGB frames) of the decoded frames within [first - tolerance, last + tolerance]."""
    times, frames = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        container.seek(max(0, int((first - tolerance) / stream.time_base)), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.time)
            if t < first - tolerance:
                continue
            if t > last + tolerance:
                break
            times.append(t)
            frames.append(frame.to_ndarray(format="rgb24"))
    return times, frames


def iter_lerobot_episodes(
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
    """Yield the episodes of a LeRobot dataset as `stamo_vla.data.rlds.iter_episodes` yields RLDS ones.

    ``num_parallel_reads`` (RLDS record files) is accepted, for one signature with the RLDS reader, and unused.

    Args:
        data_root_dir: the dataset root, or its parent (see `resolve_lerobot_dir`).
        dataset_name: the dataset's folder name under `data_root_dir` (or any name when it is the root).
        split: tfds-style split over episodes in episode_index order (see `split_range`).
        decode_images: decoded (T, H, W, 3) arrays; False gives `LazyFrames` that decode each frame on access.
        load_images: False skips frames (statistics need none).
        shard: ``(index, count)``: read only that contiguous block of the split's episodes.
        shuffle_episodes: episode shuffle buffer (0 = stored order).
        seed: seed of the episode shuffle.
        num_parallel_reads: unused (see above).
    """
    del num_parallel_reads
    dataset = LeRobotReader(resolve_lerobot_dir(data_root_dir, dataset_name))
    lo, hi = shard_range(*split_range(split, len(dataset)), shard)
    order: list[int] = list(range(lo, hi))
    if shuffle_episodes > 0:
        order = _buffer_shuffle(order, shuffle_episodes, np.random.default_rng(seed))
    for position in order:
        yield dataset.read_episode(position, load_images=load_images, decode_images=decode_images)


def _buffer_shuffle(items: list[int], size: int, rng: np.random.Generator) -> list[int]:
    """A shuffle through a buffer of `size` items (tf.data's shuffle semantics)."""
    out, buffer = [], []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            out.append(buffer.pop(int(rng.integers(len(buffer)))))
    while buffer:
        out.append(buffer.pop(int(rng.integers(len(buffer)))))
    return out
