"""Rollout videos: MP4s of the preprocessed 224 px policy frames, optionally beside a predicted future frame.

Frames stream to a hidden temporary file while the episode runs (so memory stays flat on 520-step
libero_10 episodes); `close(keep=...)` then renames it to its final name or deletes it, which is how the
"failures only" mode keeps just the failed rollouts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from stamo_vla.optional import require


def video_name(suite: str, task_id: int, init_index: int, success: bool, instruction: str) -> str:
    """File name in the spirit of upstream: ``<suite>--task=<t>--init=<i>--success=<b>--<instruction>.mp4``.

    Args:
        suite: the task suite.
        task_id: the task's index in the suite.
        init_index: the initial state's index.
        success: whether the episode succeeded.
        instruction: the task instruction (lower-cased, non-alphanumerics as underscores, first 50
            characters).
    """
    slug = re.sub(r"[^a-z0-9]+", "_", instruction.lower()).strip("_")[:50]
    return f"{suite}--task={task_id}--init={init_index}--success={success}--{slug}.mp4"


def side_by_side(frame: np.ndarray, future: np.ndarray | None) -> np.ndarray:
    """Concatenate `frame` with a predicted future frame (resized to the same height); black if missing."""
    if future is None:
        return np.concatenate([frame, np.zeros_like(frame)], axis=1)
    future = np.asarray(future)
    if future.dtype != np.uint8:
        # decoders return floats in [0, 1]
        future = (np.clip(future, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if future.ndim == 3 and future.shape[0] == 3 and future.shape[-1] != 3:
        future = future.transpose(1, 2, 0)
    if future.shape[:2] != frame.shape[:2]:
        from PIL import Image

        future = np.asarray(Image.fromarray(future).resize((frame.shape[1], frame.shape[0]), Image.BILINEAR))
    return np.concatenate([frame, future], axis=1)


class VideoRecorder:
    """Streams uint8 RGB frames of one episode to a temporary MP4 and finalizes it on `close`.

    Args:
        tmp_path: where frames are written while the episode runs (must end in ``.mp4``).
        fps: frames per second (upstream: 30).
        with_future: write each frame side by side with the latest predicted future frame.
    """

    def __init__(self, tmp_path: str | os.PathLike, fps: int = 30, with_future: bool = False) -> None:
        self.tmp_path = Path(tmp_path)
        self.fps = fps
        self.with_future = with_future
        self.frames = 0
        self._writer = None
        self._future: np.ndarray | None = None

    def set_future(self, future: np.ndarray | None) -> None:
        """Remember the most recent predicted future frame; it is shown until the next prediction."""
        if future is not None:
            self._future = future

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        if self._writer is None:
            imageio = require("imageio", "writing rollout videos")
            self.tmp_path.parent.mkdir(parents=True, exist_ok=True)
            # macro_block_size=1: 224 is not a multiple of 16; avoid imageio silently resizing the frames
            self._writer = imageio.get_writer(
                self.tmp_path, format="ffmpeg", fps=self.fps, macro_block_size=1
            )
        out = side_by_side(frame, self._future) if self.with_future else frame
        self._writer.append_data(np.ascontiguousarray(out))
        self.frames += 1

    def close(self, final_path: str | os.PathLike | None) -> Path | None:
        """Finish the file: move it to `final_path`, or delete it when `final_path` is None.

        Returns:
            The final path, or None if nothing was kept (no frames, or discarded).
        """
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if final_path is None or self.frames == 0:
            self.tmp_path.unlink(missing_ok=True)
            return None
        final_path = Path(final_path)
        final_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, final_path)
        return final_path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode an MP4 into (T, H, W, 3) uint8 (used by tests and notebooks)."""
    imageio = require("imageio", "reading rollout videos")
    # name the ffmpeg plugin: imageio otherwise may pick a plugin that reads MP4s as one huge image
    frames = []
    with imageio.get_reader(path, format="ffmpeg") as reader:
        # iterate, not list(reader): the reader reports len() = inf and list() would preallocate for it
        for frame in reader:
            frames.append(frame)
    return np.stack(frames)
