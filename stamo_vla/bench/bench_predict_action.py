"""Batched vs serial `predict_action` throughput on random-init OpenVLA presets (tiny and mid).

Upstream OpenVLA decodes one observation per call (openvla #228); `predict_action` here decodes a whole
batch with left-packed multimodal prompts and a KV cache. This measures both, side by side in one run, on
the same model, inputs and device, and checks that they return the same actions.

    stamo-vla bench --only '[predict_action]'            # full run
    stamo-vla bench --only '[predict_action]' --quick true    # a few seconds
"""

from __future__ import annotations

import time

import numpy as np
import torch

from stamo_vla.vla import build_tiny
from stamo_vla.vla.tiny import mid_config, tiny_config

INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "open the top drawer and put the bowl inside",
    "turn on the stove",
    "put the cream cheese in the bowl",
    "push the plate to the front of the stove",
    "put the wine bottle on top of the cabinet",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
]


def _inputs(processor, batch_size: int, seed: int = 0) -> dict:
    from stamo_vla.vla import build_prompt

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch_size)]
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)]) for i in range(batch_size)]
    return processor(prompts, images)


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_preset(name: str, config, batch_size: int = 8, repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per batch of `batch_size` observations, batched and serial, for one preset.

    Args:
        name: the preset's name in the report.
        config: the OpenVLA config of the preset.
        batch_size: observations per batch.
        repeats: timed rounds.
        device: the device the model runs on.
    """
    model, processor = build_tiny(config=config)
    model = model.to(device)
    inputs = _inputs(processor, batch_size)
    rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(batch_size)]
    with torch.inference_mode():
        # the equality check doubles as the warm-up (allocator, kernels) of both modes
        batched_actions = model.predict_action(**inputs)
        serial_actions = np.concatenate([model.predict_action(**row) for row in rows])
        batched_s = _time(lambda: model.predict_action(**inputs), repeats)
        serial_s = _time(lambda: [model.predict_action(**row) for row in rows], repeats)
    return {
        "preset": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch_size": batch_size,
        "batched_s": batched_s,
        "serial_s": serial_s,
        "batched_obs_per_s": batch_size / batched_s,
        "serial_obs_per_s": batch_size / serial_s,
        "speedup": serial_s / batched_s,
        "same_actions": bool(np.array_equal(batched_actions, serial_actions)),
    }


def run(quick: bool = False, presets: tuple[str, ...] = ("tiny", "mid")) -> dict:
    """Benchmark the tiny and mid presets; prints a table and returns the numbers.

    Args:
        quick: one timed repeat instead of five (for tests / smoke runs).
        presets: which of "tiny" and "mid" to run.

    Returns:
        {"device", "threads", "results": {preset: {batched_s, serial_s, *_obs_per_s, speedup, same_actions, ...}},
        "ratio": {preset: serial time / batched time}}.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = 1 if quick else 5
    configs = {"tiny": tiny_config, "mid": mid_config}
    unknown = sorted(set(presets) - set(configs))
    if unknown:
        raise ValueError(f"presets: unknown {unknown}; allowed {sorted(configs)}.")
    results = {name: bench_preset(name, configs[name](), repeats=repeats, device=device) for name in presets}
    header = f"{'preset':<6} {'params(M)':>9} {'batched s':>10} {'serial s':>9} {'batched obs/s':>14} {'serial obs/s':>13} {'speedup':>8} {'equal':>6}"
    print(f"predict_action, batch 8, device={device}, torch threads={torch.get_num_threads()}")
    print(header)
    for r in results.values():
        print(
            f"{r['preset']:<6} {r['params_m']:>9.2f} {r['batched_s']:>10.4f} {r['serial_s']:>9.4f} "
            f"{r['batched_obs_per_s']:>14.1f} {r['serial_obs_per_s']:>13.1f} {r['speedup']:>7.2f}x {str(r['same_actions']):>6}"
        )
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "results": results,
        "ratio": {name: r["speedup"] for name, r in results.items()},
    }
