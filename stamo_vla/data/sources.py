"""One entry point over our data formats: RLDS (tfds) and LeRobotDataset v3.0, same episode dicts out.

Every reader of episodes (sample stream, statistics, target cache, StaMo pretraining, pseudo-labelling) calls
these functions, so a LeRobot directory works wherever an RLDS dataset does. The format is given
(``DataConfig.format``) or detected: a LeRobot dataset has ``meta/info.json`` at ``data_root_dir`` or at
``data_root_dir/<dataset_name>``; anything else is read as RLDS (which needs the ``data`` extra, tensorflow).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from stamo_vla.data import lerobot
from stamo_vla.data.config import FORMATS


def detect_format(data_root_dir: str | os.PathLike, dataset_name: str) -> str:
    """``"lerobot"`` when a LeRobot dataset is at the root or at ``<root>/<dataset_name>``, else ``"rlds"``."""
    root = Path(data_root_dir).expanduser()
    if lerobot.is_lerobot_dataset(root) or lerobot.is_lerobot_dataset(root / dataset_name):
        return "lerobot"
    return "rlds"


def _format(data_root_dir, dataset_name: str, fmt: str | None) -> str:
    if fmt is None:
        return detect_format(data_root_dir, dataset_name)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not a data format; allowed: {list(FORMATS)}")
    if fmt == "rlds" and detect_format(data_root_dir, dataset_name) == "lerobot":
        raise ValueError(
            f"'{data_root_dir}' (dataset '{dataset_name}') is a LeRobot dataset (it has meta/info.json), not RLDS: "
            "pass --data.format lerobot"
        )
    return fmt


def resolve_dataset_dir(data_root_dir: str | os.PathLike, dataset_name: str, fmt: str | None = None) -> Path:
    """The directory holding one dataset (RLDS: ``<root>/<name>/<version>``; LeRobot: its root).

    Args:
        data_root_dir: the directory holding the datasets.
        dataset_name: the dataset's name under it.
        fmt: rlds | lerobot (None: told apart by the directory's content).
    """
    if _format(data_root_dir, dataset_name, fmt) == "lerobot":
        return lerobot.resolve_lerobot_dir(data_root_dir, dataset_name)
    from stamo_vla.data import rlds

    return rlds.resolve_dataset_dir(data_root_dir, dataset_name)


def dataset_fingerprint(dataset_dir: str | os.PathLike) -> str:
    """Cheap fingerprint of a dataset directory of either format (see the format's own function)."""
    if lerobot.is_lerobot_dataset(dataset_dir):
        return lerobot.lerobot_fingerprint(dataset_dir)
    from stamo_vla.data import rlds

    return rlds.dataset_fingerprint(dataset_dir)


def iter_episodes(
    data_root_dir: str | os.PathLike,
    dataset_name: str,
    split: str = "train",
    *,
    fmt: str | None = None,
    **kwargs,
) -> Iterator[dict]:
    """Episodes of a dataset of either format (arguments: `stamo_vla.data.rlds.iter_episodes`).

    LeRobot episodes carry decoded frames even with ``decode_images=False``.

    Args:
        data_root_dir: the directory holding the datasets.
        dataset_name: the dataset's name under it.
        split: the split to read.
        fmt: rlds | lerobot (None: told apart by the directory's content).
        **kwargs: passed to the format's reader (`stamo_vla.data.rlds.iter_episodes`).
    """
    if _format(data_root_dir, dataset_name, fmt) == "lerobot":
        return lerobot.iter_lerobot_episodes(data_root_dir, dataset_name, split, **kwargs)
    from stamo_vla.data import rlds

    return rlds.iter_episodes(data_root_dir, dataset_name, split, **kwargs)
