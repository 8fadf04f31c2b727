"""Dataset statistics for action and proprio (upstream `dataset_statistics.json` format), cached by fingerprint.

Format, per dataset name (as OpenVLA's ``save_dataset_statistics`` writes it)::

    {"action": {"mean", "std", "max", "min", "q01", "q99": [7 floats], "mask": [True]*6 + [False]},
     "proprio": {... 8 floats each ...}, "num_transitions": int, "num_trajectories": int}

Statistics cover every episode of the dataset (upstream computes them over ``split="all"``). Actions are
standardized first (gripper 1 open / 0 closed); action-free (NaN-action) episodes count towards the
transition/trajectory totals and proprio, not towards action statistics.

The cache file ``dataset_statistics_<fingerprint>.json`` lives in the dataset directory (or, when that is not
writable, under ``~/.cache/stamo_vla/statistics/``); the fingerprint covers the dataset files and the
transform settings, so a rebuilt dataset or a changed transform never reuses stale numbers.

Command line: ``stamo-vla stats --data_root_dir D --dataset_names '[N]' [--output_path FILE]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from stamo_vla.configs import parse_config
from stamo_vla.data import transforms
from stamo_vla.data.normalization import ACTION_MASK, warn_degenerate
from stamo_vla.data.sources import dataset_fingerprint, iter_episodes, resolve_dataset_dir
from stamo_vla.fileio import read_json, write_json_atomic

# bump when the statistics computation or the transforms it depends on change
TRANSFORM_VERSION = "libero_standardize_v1/proprio_eef6_gripper2/q01q99_numpy_quantile"
USER_CACHE = Path("~/.cache/stamo_vla/statistics").expanduser()


def _block(x: np.ndarray, dim: int) -> dict:
    if len(x) == 0:  # no labeled data: neutral numbers; min == max makes normalize() map every dim to 0
        zeros = [0.0] * dim
        return {"mean": zeros, "std": zeros, "max": zeros, "min": zeros, "q01": zeros, "q99": zeros}
    x = x.astype(np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "max": x.max(0).tolist(),
        "min": x.min(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def _check_finite_episodes(arrays: list[np.ndarray], what: str, allow_all_nan: bool) -> None:
    for i, x in enumerate(arrays):
        x = np.asarray(x, dtype=np.float64)
        if allow_all_nan and len(x) and np.isnan(x).all():
            continue
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"episode {i} has non-finite {what} (NaN/inf at {int((~np.isfinite(x)).sum())} values); statistics "
                "would be NaN and every action NaN. Rewrite the dataset with finite values "
                "(the RLDS writer refuses them)."
            )


def check_statistics(stats: dict, where: str) -> dict:
    """Refuse NaN/inf in a statistics block; warn about degenerate (q01 == q99) dims. Returns `stats`."""
    for part in ("action", "proprio"):
        block = stats.get(part)
        if not isinstance(block, dict):
            continue
        for key in ("mean", "std", "max", "min", "q01", "q99"):
            if key in block and not np.all(np.isfinite(np.asarray(block[key], dtype=np.float64))):
                raise ValueError(
                    f"{where}: '{part}.{key}' = {block[key]} holds NaN/inf. Recompute the statistics with "
                    "`stamo-vla stats --use_cache false` from finite data."
                )
        if "q01" in block and "q99" in block:
            warn_degenerate(block, f"{where} ({part})")
    return stats


def check_block_dims(stats: dict, part: str, dim: int, where: str) -> dict:
    """Require `dim`-D q01/q99/min/max in the `part` block of one dataset's statistics; returns the block.

    Upstream OpenVLA's ``dataset_statistics.json`` holds a 7-D all-zero proprio block (its models use no proprio),
    which a proprio config (8-D: eef position, axis-angle, gripper qpos) cannot normalize with.

    Args:
        stats: one dataset's statistics (``{"action": ..., "proprio": ...}``).
        part: ``"action"`` or ``"proprio"``.
        dim: the size the values to normalize have.
        where: the file and entry the statistics come from (named in the error).

    Raises:
        ValueError: the block is absent or a field has another shape (names `where`, the key, both shapes, the fix).
    """
    fix = (
        "Compute this dataset's statistics with `stamo-vla stats` (or drop the statistics file to compute them), "
        f"or use a config without {part} (data.load_proprio false)"
        if part == "proprio"
        else "Compute this dataset's statistics with `stamo-vla stats`"
    )
    block = stats.get(part)
    if not isinstance(block, dict):
        raise ValueError(
            f"{where}: no '{part}' statistics, but {dim}-D {part} values must be normalized. {fix}."
        )
    for key in ("q01", "q99", "min", "max"):
        shape = np.shape(block.get(key, []))
        if shape != (dim,):
            origin = " (upstream OpenVLA's files hold a 7-D zero proprio block)" if part == "proprio" else ""
            raise ValueError(
                f"{where}: '{part}.{key}' has shape {shape}, expected ({dim},) for the {dim}-D {part} this config "
                f"reads{origin}. {fix}."
            )
    return block


def statistics_from_arrays(actions: list[np.ndarray], states: list[np.ndarray]) -> dict:
    """Statistics of one dataset from per-episode raw actions (T,7) and states (T,8) (NaN actions skipped).

    Raises:
        ValueError: an episode holds NaN/inf (other than an all-NaN, action-free, action array).
    """
    _check_finite_episodes(actions, "actions", allow_all_nan=True)
    _check_finite_episodes(states, "states", allow_all_nan=False)
    labeled = [transforms.standardize_gripper(a) for a in actions if len(a) and not np.isnan(a).all()]
    action = np.concatenate(labeled) if labeled else np.zeros((0, 7), np.float32)
    proprio = (
        np.concatenate([transforms.proprio_from_state(s) for s in states]) if states else np.zeros((0, 8))
    )
    stats = {
        "action": {**_block(action, 7), "mask": list(ACTION_MASK)},
        "proprio": _block(proprio, 8),
        "num_transitions": int(sum(len(s) for s in states)),
        "num_trajectories": len(states),
    }
    return check_statistics(stats, "computed dataset statistics")


def statistics_fingerprint(dataset_dir: str | os.PathLike) -> str:
    """Fingerprint of the dataset files plus the transform settings the statistics depend on."""
    return hashlib.sha256(f"{dataset_fingerprint(dataset_dir)}|{TRANSFORM_VERSION}".encode()).hexdigest()


def _cache_candidates(dataset_dir: Path, fingerprint: str) -> list[Path]:
    name = f"dataset_statistics_{fingerprint[:16]}.json"
    return [dataset_dir / name, USER_CACHE / f"{dataset_dir.parent.name}_{dataset_dir.name}_{name}"]


def compute_statistics(
    data_root_dir: str | os.PathLike, dataset_name: str, use_cache: bool = True, num_parallel_reads: int = 1
) -> dict:
    """Return the statistics block of one dataset (see module docstring), from the cache when valid.

    Args:
        data_root_dir: folder containing ``<dataset_name>/<version>/``.
        dataset_name: dataset to summarize.
        use_cache: read/write the fingerprinted cache file.
        num_parallel_reads: record files read in parallel.
    """
    dataset_dir = resolve_dataset_dir(data_root_dir, dataset_name)
    fingerprint = statistics_fingerprint(dataset_dir)
    candidates = _cache_candidates(dataset_dir, fingerprint)
    if use_cache:
        for path in candidates:
            if path.is_file():
                try:
                    cached = read_json(path, "")
                except ValueError:
                    continue  # a damaged cache file is recomputed and rewritten
                if cached.get("fingerprint") == fingerprint:
                    return check_statistics(cached["statistics"], str(path))
    actions, states = [], []
    for ep in iter_episodes(
        data_root_dir, dataset_name, "train", load_images=False, num_parallel_reads=num_parallel_reads
    ):
        actions.append(ep["action"])
        states.append(ep["state"])
    stats = statistics_from_arrays(actions, states)
    if use_cache:
        for path in candidates:
            try:
                write_json_atomic(path, {"fingerprint": fingerprint, "statistics": stats})
                break
            except OSError:
                continue  # read-only dataset directory: fall back to the user cache
    return stats


def save_dataset_statistics(statistics: dict[str, dict], path: str | os.PathLike) -> None:
    """Write ``{dataset_name: block}`` as the upstream ``dataset_statistics.json`` (atomically)."""
    write_json_atomic(path, statistics)


def load_dataset_statistics(path: str | os.PathLike) -> dict[str, dict]:
    """Read a ``dataset_statistics.json``; a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset statistics file '{path}' does not exist; create it with `stamo-vla stats`"
        )
    data = read_json(
        path, "Recreate it with `stamo-vla stats --output_path`.", name=f"dataset statistics file '{path}'"
    )
    if not isinstance(data, dict):
        raise ValueError(f"'{path}': expected {{dataset_name: statistics}}, got {type(data).__name__}")
    for name, block in data.items():
        if not isinstance(block, dict) or "action" not in block:
            raise ValueError(
                f"'{path}': entry '{name}' has no 'action' statistics; expected the upstream format"
            )
        check_statistics(block, f"'{path}' entry '{name}'")
    return data


@dataclasses.dataclass
class StatsConfig:
    """Options of ``stamo-vla stats``."""

    # folder containing <dataset_name>/<version>/
    data_root_dir: str = ""
    # one or more dataset names
    dataset_names: list[str] = dataclasses.field(default_factory=list)
    # write dataset_statistics.json here (None: print it)
    output_path: str | None = None
    # reuse a valid cached result (false: recompute)
    use_cache: bool = True

    def __post_init__(self) -> None:
        if not self.data_root_dir or not self.dataset_names:
            raise ValueError(
                f"data_root_dir={self.data_root_dir!r} and dataset_names={self.dataset_names} must both be given: "
                "--data_root_dir D --dataset_names '[N]'"
            )


def main_stats(argv: list[str] | None = None) -> int:
    """``stamo-vla stats``: compute and print / write ``dataset_statistics.json``."""
    cfg = parse_config(StatsConfig, sys.argv[1:] if argv is None else argv)
    stats = {
        name: compute_statistics(cfg.data_root_dir, name, use_cache=cfg.use_cache)
        for name in cfg.dataset_names
    }
    if cfg.output_path:
        save_dataset_statistics(stats, cfg.output_path)
        print(f"wrote {cfg.output_path}")
    else:
        print(json.dumps(stats, indent=2))
    return 0


main = main_stats
