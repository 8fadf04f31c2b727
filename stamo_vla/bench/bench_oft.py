"""Actions per second: OpenVLA-OFT-style parallel decoding (K = 8 actions, one pass) vs autoregressive tokens.

Same random-init model (tiny and mid presets), same LoRA adapter settings, same batch of observations, side by
side in one run: the token adapter decodes 7 action tokens per observation (one action per call, KV cache), the
OFT adapter fills K x 7 empty positions in one bidirectional pass and regresses K actions with the L1 head. Also
measured: the OFT variant with both cameras + proprio, and the StaMo head's overhead (predicting the future
StaMo state from the same pass) for the OFT variant.

    stamo-vla bench --only '[oft]'            # full run
    stamo-vla bench --only '[oft]' --quick true    # best of two timed repeats
"""

from __future__ import annotations

import numpy as np
import torch

from stamo_vla.adapter import StaMoAdapterConfig, attach
from stamo_vla.adapter.action_heads import L1ActionHead
from stamo_vla.bench._common import timed_rounds
from stamo_vla.bench.bench_predict_action import INSTRUCTIONS  # the same prompts for both decoders
from stamo_vla.vla import build_tiny
from stamo_vla.vla.tiny import mid_config, tiny_config

CHUNK = 8


def _time(fns: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds per call of each function, interleaved."""
    return timed_rounds(fns, repeats, reduce="min")


def _adapter(config, device: str, **adapter_kwargs):
    base, processor = build_tiny(config=config, seed=0)
    hidden = base.config.text_config.hidden_size
    cfg = StaMoAdapterConfig(target="state", head_width=hidden, lora_rank=8, **adapter_kwargs)
    return attach(base.to(device), cfg, target_shape=(2, 64)).eval(), processor


def _inputs(processor, batch_size: int, num_images: int, device: str) -> dict:
    from stamo_vla.vla import build_prompt

    rng = np.random.default_rng(0)
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)]) for i in range(batch_size)]
    views = [
        [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch_size)]
        for _ in range(num_images)
    ]
    enc = processor(prompts, views[0])
    pixels = torch.cat(
        [enc["pixel_values"]] + [processor.image_processor(v)["pixel_values"] for v in views[1:]], 1
    )
    return {
        "pixel_values": pixels.to(device),
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
    }


def bench_preset(name: str, config, batch_size: int = 8, repeats: int = 3, device: str = "cpu") -> dict:
    """Actions/s of the token and OFT adapters on one preset, plus the StaMo head's overhead for OFT.

    Args:
        name: the preset's name in the report.
        config: the OpenVLA config of the preset.
        batch_size: observations per batch.
        repeats: timed rounds.
        device: the device the models run on.
    """
    tokens, processor = _adapter(config, device)
    oft, _ = _adapter(config, device, action_head=L1ActionHead(action_chunk=CHUNK))
    full, _ = _adapter(
        config, device, action_head=L1ActionHead(action_chunk=CHUNK, num_images=2, use_proprio=True)
    )
    one = _inputs(processor, batch_size, 1, device)
    two = _inputs(processor, batch_size, 2, device)
    proprio = torch.zeros(batch_size, 8, device=device)
    hidden = torch.randn(batch_size, oft.head.mlp[0].normalized_shape[0], device=device)
    with torch.inference_mode():
        times = _time(
            {
                "tokens": lambda: tokens.predict_action(**one),
                "oft": lambda: oft.predict_action(**one),
                "oft_head": lambda: oft.predict_action(**one, return_future_state=True),
                "full": lambda: full.predict_action(**two, proprio=proprio),
                "head": lambda: oft.head(hidden),
            },
            repeats,
        )
        token_s, oft_s, oft_head_s, full_s = (times[k] for k in ("tokens", "oft", "oft_head", "full"))
        chunk = oft.predict_action(**one)
    return {
        "preset": name,
        "params_m": sum(p.numel() for p in oft.parameters()) / 1e6,
        "batch_size": batch_size,
        "action_chunk": CHUNK,
        "tokens_s_per_call": token_s,
        "oft_s_per_call": oft_s,
        "tokens_actions_per_s": batch_size / token_s,
        "oft_actions_per_s": batch_size * CHUNK / oft_s,
        "oft_2img_proprio_actions_per_s": batch_size * CHUNK / full_s,
        "speedup_actions_per_s": (batch_size * CHUNK / oft_s) / (batch_size / token_s),
        # end to end (within timing noise on a loaded CPU) and the head MLP alone relative to the pass
        "oft_stamo_head_overhead": oft_head_s / oft_s - 1.0,
        "oft_stamo_head_mlp_fraction": times["head"] / oft_s,
        "oft_chunk_shape": list(chunk.shape),
    }


def run(quick: bool = False, presets: tuple[str, ...] = ("tiny", "mid")) -> dict:
    """Benchmark the tiny and mid presets; prints a table and returns the numbers.

    Args:
        quick: best of two timed repeats instead of seven (tests, smoke runs).
        presets: which of "tiny" and "mid" to run.

    Returns:
        {"device", "threads", "results": {preset: {...}}, "speedup": {preset: OFT actions/s / token actions/s},
        "stamo_head_overhead": {preset: fraction of extra time for the future state}}.
    """
    configs = {"tiny": tiny_config, "mid": mid_config}
    unknown = sorted(set(presets) - set(configs))
    if unknown:
        raise ValueError(f"presets: unknown {unknown}; allowed {sorted(configs)}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = 2 if quick else 7
    results = {name: bench_preset(name, configs[name](), repeats=repeats, device=device) for name in presets}
    print(f"actions/s, batch 8, K={CHUNK}, device={device}, torch threads={torch.get_num_threads()}")
    print(
        f"{'preset':<6} {'tokens a/s':>11} {'OFT a/s':>9} {'OFT 2img+prop a/s':>18} {'speedup':>8} {'head e2e':>9} {'head MLP':>9}"
    )
    for r in results.values():
        print(
            f"{r['preset']:<6} {r['tokens_actions_per_s']:>11.1f} {r['oft_actions_per_s']:>9.1f} "
            f"{r['oft_2img_proprio_actions_per_s']:>18.1f} {r['speedup_actions_per_s']:>7.1f}x "
            f"{100 * r['oft_stamo_head_overhead']:>8.1f}% {100 * r['oft_stamo_head_mlp_fraction']:>8.2f}%"
        )
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "results": results,
        "speedup": {n: r["speedup_actions_per_s"] for n, r in results.items()},
        "stamo_head_overhead": {n: r["oft_stamo_head_overhead"] for n, r in results.items()},
        "stamo_head_mlp_fraction": {n: r["oft_stamo_head_mlp_fraction"] for n, r in results.items()},
    }
