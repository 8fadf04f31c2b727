"""``stamo-vla convert``: RLDS <-> LeRobotDataset v3.0, every episode with its instruction, state, action, frames.

Command line::

    # RLDS -> LeRobot (the lerobot/libero layout; --video false: PNG in parquet, the HuggingFaceVLA/libero layout)
    stamo-vla convert --to lerobot --data_root_dir .../modified_libero_rlds --dataset_name libero_spatial_no_noops \
        --output_dir ~/.cache/huggingface/lerobot/local/libero_spatial
    # LeRobot -> RLDS (writes <output_dir>/<output_name>/1.0.0/, readable by upstream OpenVLA / OFT)
    stamo-vla convert --to rlds --data_root_dir ~/.cache/huggingface/lerobot/lerobot/libero \
        --dataset_name libero --output_dir .../modified_libero_rlds --output_name libero_lerobot

What each side keeps: actions, states and instructions exactly (float32 both sides); the joint state
(RLDS ``joint_state`` <-> LeRobot ``observation.states.joint_state``; zeros when a LeRobot dataset has none);
frames re-encoded by the target's codec (RLDS: JPEG quality 95; LeRobot: AV1 at LeRobot's defaults, or
lossless PNG), and resized to the RLDS spec's 256 px with Lanczos-3 when a LeRobot dataset stores another size.
Statistics are written in each side's form: LeRobot's ``meta/stats.json`` (with quantiles) by the writer; the RLDS
``dataset_statistics.json`` is computed from the new dataset on first use (``stamo-vla stats``).
RLDS ``file_path`` has no LeRobot field: LeRobot -> RLDS names episodes ``episode_<episode_index>``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator

import numpy as np

from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.data import spec
from stamo_vla.data.lerobot import resize_frame
from stamo_vla.data.sources import detect_format, iter_episodes
from stamo_vla.fileio import check_apart, dataset_inputs

TARGETS = ("lerobot", "rlds")


@dataclasses.dataclass
class ConvertConfig:
    """Options of ``stamo-vla convert``."""

    # the format to write: "lerobot" (from an RLDS dataset) or "rlds" (from a LeRobot dataset)
    to: str = ""
    # the input: an RLDS data_root_dir (holding <dataset_name>/<version>/), or a LeRobot dataset root or its parent
    data_root_dir: str = ""
    # the input dataset's name under data_root_dir (for a LeRobot root given directly, any name)
    dataset_name: str = ""
    # to lerobot: the new dataset's root; to rlds: the data_root_dir that receives <output_name>/<version>/
    output_dir: str = ""
    # to rlds: the new dataset's tfds name, lower snake case (empty = dataset_name)
    output_name: str = ""
    # to lerobot: AV1 MP4 per camera (the lerobot/libero layout); false = PNG bytes in parquet (HuggingFaceVLA/libero)
    video: bool = True
    # to lerobot: frames per second recorded in info.json (LIBERO demonstrations: 10)
    fps: int = 10
    # to lerobot: replace an earlier `convert` output at output_dir (anything else is never replaced)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise ValueError(
                f"to={self.to!r} is not an output format; allowed: {list(TARGETS)} (--to lerobot)"
            )
        for name in ("data_root_dir", "dataset_name", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must be given (--{name} ...)")
        check_positive_int("fps", self.fps)


def to_rlds_spec(episodes: Iterator[dict]) -> Iterator[dict]:
    """Episodes with frames at the RLDS spec's 256 px (Lanczos-3 resize when another size is stored)."""
    size = spec.IMAGE_SIZE
    for ep in episodes:
        for key in ("image", "wrist_image"):
            frames = ep[key]
            if frames.shape[1:3] != (size, size):
                ep[key] = np.stack([resize_frame(f, size) for f in frames])
        yield ep


def convert(cfg: ConvertConfig) -> str:
    """Run one conversion; returns the written dataset's directory."""
    source = detect_format(cfg.data_root_dir, cfg.dataset_name)
    wanted = "rlds" if cfg.to == "lerobot" else "lerobot"
    if source != wanted:
        raise ValueError(
            f"--to {cfg.to} converts a {wanted} dataset, but '{cfg.data_root_dir}' (dataset '{cfg.dataset_name}') "
            f"is {source}. Pass --to {'rlds' if cfg.to == 'lerobot' else 'lerobot'} to convert it the other way."
        )
    written = (
        cfg.output_dir
        if cfg.to == "lerobot"
        else os.path.join(cfg.output_dir, cfg.output_name or cfg.dataset_name)
    )
    check_apart(
        {"output_dir": written}, dataset_inputs("data_root_dir", cfg.data_root_dir, [cfg.dataset_name])
    )
    episodes = iter_episodes(cfg.data_root_dir, cfg.dataset_name, "train", fmt=source)
    if cfg.to == "lerobot":
        from stamo_vla.data.lerobot_writer import write_lerobot_dataset

        return str(
            write_lerobot_dataset(
                episodes, cfg.output_dir, fps=cfg.fps, video=cfg.video, overwrite=cfg.overwrite
            )
        )
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    return str(
        write_rlds_dataset(to_rlds_spec(episodes), cfg.output_dir, cfg.output_name or cfg.dataset_name)
    )


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla convert``."""
    cfg = parse_config(ConvertConfig, sys.argv[1:] if argv is None else argv)
    print(f"wrote {convert(cfg)}")
    return 0
