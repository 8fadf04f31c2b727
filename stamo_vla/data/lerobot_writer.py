"""Write LeRobotDataset v3.0 directories that LeRobot's own ``LeRobotDataset(repo_id, root=...)`` loads.

Input: the episode dicts our RLDS reader yields (`stamo_vla.data.rlds.iter_episodes`; see
`stamo_vla.data.rlds_writer` for the fields). Output, as LeRobot 0.6 writes it (key mapping:
`stamo_vla.data.lerobot`)::

    meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes/chunk-000/file-000.parquet
    data/chunk-000/file-NNN.parquet            frames, state, joint state, action, indices
    videos/<camera>/chunk-000/file-NNN.mp4     AV1 (libsvtav1, yuv420p, g=2, crf=30, preset 12: LeRobot's
                                               encoder defaults), episodes back to back; or, with
                                               ``video=False``, PNG bytes inside the data parquet
                                               (the ``HuggingFaceVLA/libero`` layout)

``meta/stats.json`` holds, per feature, min / max / mean / std / count and the quantiles q01 / q10 / q50 /
q90 / q99 that LeRobot's quantile normalization (pi0.5) reads; ours are exact (numpy over every frame), LeRobot's
are histogram estimates of the same numbers. Image statistics are per channel, shape (3, 1, 1), in [0, 1].
The directory is built in a temporary sibling and swapped in at the end (`stamo_vla.fileio.atomic_dir`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stamo_vla.data import lerobot as lr
from stamo_vla.data import spec
from stamo_vla.data.rlds_writer import check_finite, validate_episode
from stamo_vla.fileio import atomic_dir, write_json_atomic
from stamo_vla.optional import require

CODEBASE_VERSION = "v3.0"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
CAMERAS = {"image": lr.PRIMARY_CAMERAS[0], "wrist_image": lr.WRIST_CAMERAS[0]}
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
# LeRobot's encoder defaults (lerobot.configs.video.VideoEncoderConfig, libsvtav1 preset 12)
VIDEO_OPTIONS = {"g": "2", "crf": "30", "preset": "12", "svtav1-params": "fast-decode=0"}
VIDEO_CODEC, PIX_FMT = "libsvtav1", "yuv420p"
FILE_SIZE_MB = {"data": 100, "video": 200}
_NAMES = {
    lr.STATE_KEY: ["x", "y", "z", "axis_angle1", "axis_angle2", "axis_angle3", "gripper1", "gripper2"],
    lr.JOINT_STATE_KEY: [f"joint_{i}" for i in range(spec.JOINT_DIM)],
    lr.ACTION_KEY: ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
}
_INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _features(size: int, video: bool, fps: float) -> dict:
    """The ``features`` block of info.json."""
    features: dict = {}
    for key in CAMERAS.values():
        features[key] = {
            "dtype": "video" if video else "image",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        }
        if video:
            features[key]["info"] = {
                "video.height": size,
                "video.width": size,
                "video.codec": "av1",
                "video.pix_fmt": PIX_FMT,
                "video.fps": int(fps),
                "video.channels": 3,
                "has_audio": False,
                "video.g": int(VIDEO_OPTIONS["g"]),
                "video.crf": int(VIDEO_OPTIONS["crf"]),
                "video.preset": int(VIDEO_OPTIONS["preset"]),
                "video.fast_decode": 0,
                "video.video_backend": "pyav",
                "video.extra_options": {},
                "is_depth_map": False,
            }
    for key, names in _NAMES.items():
        features[key] = {"dtype": "float32", "shape": [len(names)], "names": names}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in _INDEX_KEYS[1:]:
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def feature_stats(x: np.ndarray) -> dict:
    """LeRobot's per-feature statistics of (N, D) values: min, max, mean, std, count, q01..q99 (lists)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x[np.isfinite(x).all(1)]  # action-free (all-NaN) episodes count for no action statistic
    if not len(x):
        x = np.zeros((1, x.shape[1]))
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0)
    return {k: v.tolist() for k, v in out.items()}


def pixel_histogram(frames: np.ndarray) -> np.ndarray:
    """(3, 256) counts of each uint8 value per channel over (N, H, W, 3) frames."""
    flat = np.asarray(frames, dtype=np.uint8).reshape(-1, 3)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)]).astype(np.int64)


def image_stats(histogram: np.ndarray, num_frames: int) -> dict:
    """Per-channel statistics in [0, 1] from a (3, 256) pixel histogram, each value shaped (3, 1, 1).

    uint8 pixels make the histogram exact: the quantiles are numpy's (linear interpolation) over every pixel.
    """
    levels = np.arange(256) / 255.0
    total = histogram.sum(1)
    mean = (histogram * levels).sum(1) / total
    out = {
        "min": levels[(histogram > 0).argmax(1)],
        "max": levels[255 - (histogram[:, ::-1] > 0).argmax(1)],
        "mean": mean,
        "std": np.sqrt((histogram * (levels - mean[:, None]) ** 2).sum(1) / total),
    }
    cumulative = histogram.cumsum(1)
    for q in QUANTILES:
        pos = q * (total - 1)
        lo = np.array([np.searchsorted(c, k, side="right") for c, k in zip(cumulative, np.floor(pos))])
        hi = np.array([np.searchsorted(c, k, side="right") for c, k in zip(cumulative, np.ceil(pos))])
        out[f"q{int(round(q * 100)):02d}"] = levels[lo] + (pos - np.floor(pos)) * (levels[hi] - levels[lo])
    return {k: [[[float(c)]] for c in v] for k, v in out.items()} | {"count": [int(num_frames)]}


class _VideoStream:
    """One camera's MP4 files: episodes appended back to back, a new file once the size limit is reached."""

    def __init__(self, root: Path, key: str, fps: float, limit_mb: float) -> None:
        self.av = require("av", "writing LeRobot videos")
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner per file unless told errors only
        self.root, self.key, self.fps, self.limit = root, key, fps, limit_mb * 1e6
        self.file_index, self.frames_in_file, self.container, self.path = -1, 0, None, None

    def _open(self, width: int, height: int) -> None:
        self.close()
        self.file_index += 1
        self.path = self.root / VIDEO_PATH.format(
            video_key=self.key, chunk_index=0, file_index=self.file_index
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(self.path), "w")
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=int(self.fps), options=dict(VIDEO_OPTIONS))
        self.stream.pix_fmt, self.stream.width, self.stream.height = PIX_FMT, width, height
        self.frames_in_file = 0

    def add(self, frames: np.ndarray) -> dict:
        """Encode one episode's frames; return its ``videos/<key>/...`` episode-metadata columns."""
        if self.container is None or (self.path.is_file() and self.path.stat().st_size > self.limit):
            self._open(frames.shape[2], frames.shape[1])
        start = self.frames_in_file / self.fps
        for t, frame in enumerate(frames):
            out = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
            out.pts = self.frames_in_file + t
            if t == 0:  # each episode starts on a key frame, as LeRobot's per-episode files concatenated
                out.pict_type = self.av.video.frame.PictureType.I
            self.container.mux(self.stream.encode(out))
        self.frames_in_file += len(frames)
        prefix = f"videos/{self.key}/"
        return {
            prefix + "chunk_index": 0,
            prefix + "file_index": self.file_index,
            prefix + "from_timestamp": start,
            prefix + "to_timestamp": self.frames_in_file / self.fps,
        }

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode())
            self.container.close()
            self.container = None


def _png(frame: np.ndarray, t: int) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"frame-{t:06d}.png"}


def _hf_metadata(names: list[str], columns: dict) -> dict[bytes, bytes]:
    """The ``huggingface`` schema metadata `datasets` writes (LeRobot reads the parquet through `datasets`)."""
    features = {}
    for name in names:
        value = columns.get(name)
        if value is None:
            features[name] = {"_type": "Image"}
        elif value.ndim == 2:
            dtype = {"dtype": str(value.dtype), "_type": "Value"}
            features[name] = {"feature": dtype, "length": value.shape[1], "_type": "List"}
        else:
            features[name] = {"dtype": str(value.dtype), "_type": "Value"}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _tasks_table(pa, tasks: list[str]):
    """meta/tasks.parquet as LeRobot writes it: a pandas frame indexed by the task string."""
    pandas = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
    }  # fmt: skip
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": tasks})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()})


class LeRobotWriter:
    """Build one LeRobot v3.0 dataset in `root` (an empty directory), episode by episode.

    Args:
        root: the directory to fill (normally `atomic_dir`'s temporary one; see `write_lerobot_dataset`).
        fps: frames per second of the data (LIBERO: 10, as ``lerobot/libero``).
        video: encode frames as AV1 MP4 (``lerobot/libero``); False stores PNG bytes in the data parquet
            (``HuggingFaceVLA/libero``).
        robot_type: ``robot_type`` of info.json.
    """

    def __init__(
        self, root: str | os.PathLike, fps: float = 10, video: bool = True, robot_type: str = "panda"
    ):
        self.pa = require("pyarrow", "writing LeRobot datasets")
        self.pq = require("pyarrow.parquet", "writing LeRobot datasets")
        self.root, self.fps, self.video, self.robot_type = Path(root), float(fps), video, robot_type
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.values: dict[str, list[np.ndarray]] = {k: [] for k in (*_NAMES, *_INDEX_KEYS)}
        self.histograms = {k: np.zeros((3, 256), np.int64) for k in CAMERAS.values()}
        self.streams = (
            {key: _VideoStream(self.root, key, self.fps, FILE_SIZE_MB["video"]) for key in CAMERAS.values()}
            if video
            else {}
        )
        self.pending: list = []  # record batches of the data file being filled
        self.pending_bytes, self.data_file, self.frames, self.size = 0, 0, 0, None

    def add_episode(self, episode: dict) -> None:
        """Append one episode (our episode dict; frames (T, S, S, 3) uint8 upright)."""
        length = validate_episode(episode)
        check_finite(episode)
        size = int(np.asarray(episode["image"]).shape[1])
        if self.size not in (None, size):
            raise ValueError(f"episode frames are {size} px but earlier episodes are {self.size} px")
        self.size = size
        index = len(self.episodes)
        task = str(episode["language_instruction"])
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns = {
            lr.STATE_KEY: np.asarray(episode["state"], np.float32),
            lr.JOINT_STATE_KEY: np.asarray(episode["joint_state"], np.float32),
            lr.ACTION_KEY: np.asarray(episode["action"], np.float32),
            "timestamp": (np.arange(length) / self.fps).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, index, np.int64),
            "index": np.arange(self.frames, self.frames + length, dtype=np.int64),
            "task_index": np.full(length, task_index, np.int64),
        }
        meta = {"episode_index": index, "tasks": [task], "length": length}
        frames = {key: np.asarray(episode[name]) for name, key in CAMERAS.items()}
        for key, stream in self.streams.items():
            meta.update(stream.add(frames[key]))
        meta.update(self._append_rows(columns, frames))
        meta.update({"dataset_from_index": self.frames, "dataset_to_index": self.frames + length})
        stats = {k: feature_stats(v) for k, v in columns.items()}
        for key, f in frames.items():
            histogram = pixel_histogram(f)
            self.histograms[key] += histogram
            stats[key] = image_stats(histogram, len(f))
        meta.update({f"stats/{k}/{s}": v for k, block in stats.items() for s, v in block.items()})
        meta.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for key, value in columns.items():
            self.values[key].append(value)
        self.episodes.append(meta)
        self.frames += length

    def _append_rows(self, columns: dict, frames: dict) -> dict:
        """Add an episode's rows to the current data file (a new one past the size limit)."""
        pa = self.pa
        arrays, names = [], []
        for key, value in columns.items():
            if value.ndim == 2:
                flat = pa.array(value.reshape(-1), pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, value.shape[1]))
            else:
                arrays.append(pa.array(value))
            names.append(key)
        if not self.video:
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            for key, f in frames.items():
                arrays.append(pa.array([_png(x, t) for t, x in enumerate(f)], image_type))
                names.append(key)
        batch = pa.RecordBatch.from_arrays(arrays, names=names).replace_schema_metadata(
            _hf_metadata(names, columns)
        )
        if self.pending and self.pending_bytes + batch.nbytes > FILE_SIZE_MB["data"] * 1e6:
            self._flush_data()
        self.pending.append(batch)
        self.pending_bytes += batch.nbytes
        return {"data/chunk_index": 0, "data/file_index": self.data_file}

    def _flush_data(self) -> None:
        if not self.pending:
            return
        path = self.root / DATA_PATH.format(chunk_index=0, file_index=self.data_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pq.write_table(self.pa.Table.from_batches(self.pending), path)
        self.pending, self.pending_bytes = [], 0
        self.data_file += 1

    def finalize(self) -> None:
        """Close videos and the last data file; write meta/ (info, stats, tasks, episodes)."""
        if not self.episodes:
            raise ValueError("no episodes to write: the source dataset is empty")
        for stream in self.streams.values():
            stream.close()
        self._flush_data()
        pa, pq = self.pa, self.pq
        (self.root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), self.root / EPISODES_PATH)
        pq.write_table(
            _tasks_table(pa, sorted(self.tasks, key=self.tasks.get)), self.root / "meta/tasks.parquet"
        )
        stats = {k: feature_stats(np.concatenate(v)) for k, v in self.values.items()}
        stats |= {k: image_stats(h, self.frames) for k, h in self.histograms.items()}
        write_json_atomic(self.root / lr.STATS_PATH, stats, indent=4)
        write_json_atomic(self.root / lr.INFO_PATH, self._info(), indent=4)

    def _info(self) -> dict:
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": 1000,
            "data_files_size_in_mb": FILE_SIZE_MB["data"],
            "video_files_size_in_mb": FILE_SIZE_MB["video"],
            "fps": int(self.fps),
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video else None,
            "features": _features(self.size, self.video, self.fps),
        }


def write_lerobot_dataset(
    episodes: Iterable[dict],
    output_dir: str | os.PathLike,
    fps: float = 10,
    video: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write `episodes` as a LeRobot v3.0 dataset at `output_dir` (atomically: all or nothing).

    Args:
        episodes: episode dicts as `stamo_vla.data.rlds.iter_episodes` yields them (decoded frames).
        output_dir: the dataset root to create; an existing non-empty directory is refused unless it is an
            earlier `write_lerobot_dataset` output and `overwrite` is set.
        fps: frames per second (LIBERO: 10).
        video: AV1 MP4 frames (True) or PNG bytes in parquet (False).
        overwrite: replace an earlier output of this function.
    """
    with atomic_dir(output_dir, "lerobot_dataset", overwrite=overwrite) as tmp:
        writer = LeRobotWriter(tmp, fps=fps, video=video)
        for episode in episodes:
            writer.add_episode(episode)
        writer.finalize()
    return Path(output_dir)
