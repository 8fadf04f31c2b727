"""RLDS sample-stream throughput and host-memory growth (openvla #4/#39/#167: "RAM keeps growing").

Writes a synthetic LIBERO-spec dataset into a temporary directory, then streams training batches through
`DataConfig.build()` + `make_dataloader` for two shuffle-buffer sizes, reporting samples/s and resident memory
(RSS) after a small and a large number of batches. Bounded memory shows as RSS that stops growing between the
two checkpoints; a bigger shuffle buffer should cost a roughly constant extra amount, not a growing one.

    stamo-vla bench --only '[rlds_loader]'            # 40 episodes x 60 steps, 50 vs 500 batches, buffers 100 / 1000
    stamo-vla bench --only '[rlds_loader]' --quick true    # 4 episodes x 12 steps, 5 vs 20 batches, buffers 20 / 80
"""

from __future__ import annotations

import os
import resource
import tempfile
import time

import numpy as np

from stamo_vla.data.config import DataConfig
from stamo_vla.data.rlds_writer import write_rlds_dataset


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _episode(i: int, length: int) -> dict:
    """A synthetic episode with smooth, moving images (compresses like camera frames, unlike noise)."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    frames = np.empty((length, 256, 256, 3), np.uint8)
    for t in range(length):
        phase = 0.05 * t + i
        for c in range(3):
            frames[t, ..., c] = 127 + 100 * np.sin(xx / (20 + 7 * c) + phase) * np.cos(yy / 31 - phase)
    return {
        "image": frames,
        "wrist_image": frames[:, ::-1].copy(),
        "state": rng.normal(size=(length, 8)).astype(np.float32),
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": np.concatenate(
            [rng.normal(size=(length, 6)), rng.choice([-1.0, 1.0], (length, 1))], 1
        ).astype(np.float32),
        "language_instruction": "put the bowl on the plate",
        "file_path": f"bench/episode_{i:04d}.hdf5",
    }


def _stream(root: str, name: str, buffer: int, batches: list[int], batch_size: int) -> dict:
    """Stream batches from one config; RSS and throughput at each checkpoint in `batches`."""
    from stamo_vla.data.dataset import make_dataloader

    cfg = DataConfig(
        data_root_dir=root, dataset_names=[name], shuffle_buffer_size=buffer, repeat=True, seed=0
    )
    loader = make_dataloader(cfg.build(rank=0, world_size=1), batch_size=batch_size)
    it = iter(loader)
    next(it)  # warm-up: first batch fills the shuffle buffer and starts the reader
    rss0, peak = _rss_mb(), _rss_mb()
    start, done, out = time.perf_counter(), 0, {}
    for target in sorted(batches):
        while done < target:
            next(it)
            done += 1
            if done % 10 == 0:
                peak = max(peak, _rss_mb())
        elapsed = time.perf_counter() - start
        out[target] = {
            "samples_per_s": done * batch_size / elapsed,
            "rss_mb": _rss_mb(),
            "rss_growth_mb": _rss_mb() - rss0,
            "peak_rss_growth_mb": max(peak, _rss_mb()) - rss0,
        }
    del it, loader
    return {"rss_after_warmup_mb": rss0, "checkpoints": out}


def run(quick: bool = False) -> dict:
    """Benchmark the loader; prints a table and returns the numbers.

    Args:
        quick: small dataset and few batches (seconds, for smoke tests).

    Returns:
        {"episodes", "steps_per_episode", "batch_size", "results": {buffer: {"rss_after_warmup_mb",
        "checkpoints": {n_batches: {samples_per_s, rss_mb, rss_growth_mb, peak_rss_growth_mb}}}}}.
    """
    episodes, length = (4, 12) if quick else (40, 60)
    buffers, batches, batch_size = ([20, 80], [5, 20], 4) if quick else ([100, 1000], [50, 500], 8)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_rlds_") as root:
        name = "bench_libero"
        t0 = time.perf_counter()
        write_rlds_dataset((_episode(i, length) for i in range(episodes)), root, name)
        write_s = time.perf_counter() - t0
        for buffer in buffers:
            results[buffer] = _stream(root, name, buffer, batches, batch_size)
    print(
        f"RLDS loader: {episodes} episodes x {length} steps (written in {write_s:.1f}s), batch {batch_size}, "
        "1 reader, no augmentation"
    )
    print(
        f"{'buffer':>7} {'batches':>8} {'samples/s':>10} {'RSS MiB':>8} {'growth MiB':>11} {'peak growth':>12}"
    )
    for buffer, res in results.items():
        for n, row in res["checkpoints"].items():
            print(
                f"{buffer:>7} {n:>8} {row['samples_per_s']:>10.1f} {row['rss_mb']:>8.0f} "
                f"{row['rss_growth_mb']:>11.1f} {row['peak_rss_growth_mb']:>12.1f}"
            )
    return {
        "episodes": episodes,
        "steps_per_episode": length,
        "batch_size": batch_size,
        "write_s": write_s,
        "results": results,
    }
