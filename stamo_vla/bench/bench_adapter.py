"""StaMo adapter overheads, measured side by side in one run on the same model, inputs and device.

1. Training step (forward + backward + AdamW) relative to plain LoRA (target none): StaMo head with targets from
   the cache (STATE/FUTURE_STATE in the batch) and with targets from the frozen encoder on the fly.
2. `predict_action` latency: LoRA merged into the base (no adapter) vs adapter attached with the head off vs head
   on (future state returned too). The head reads the prefill hidden state, so "on" costs one small MLP.

    stamo-vla bench --only '[adapter]' [--quick true]

Paper reference: 4.16 -> 4.02 Hz (3.4% slower) for OpenVLA + StaMo on an RTX 4090.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig, attach
from stamo_vla.bench._common import timed_rounds
from stamo_vla.stamo import StaMoEncoder, tiny_config


def _batch(processor, base, n: int, state_shape: tuple[int, int], seed: int = 0) -> dict:
    from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform

    rng = np.random.default_rng(seed)
    transform = OpenVLABatchTransform(processor, ActionTokenizer(base.action_vocab_size))
    samples = [
        {
            K.IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
            K.INSTRUCTION: "pick up the black bowl between the plate and the ramekin and place it on the plate",
            K.ACTION: rng.uniform(-1, 1, (1, 7)).astype(np.float32),
        }
        for _ in range(n)
    ]
    batch = transform.collate_samples(samples)
    batch[K.STATE] = torch.randn(n, *state_shape)
    batch[K.FUTURE_STATE] = torch.randn(n, *state_shape)
    batch[K.STAMO_PIXELS] = torch.rand(n, 3, 224, 224)
    batch[K.FUTURE_STAMO_PIXELS] = torch.rand(n, 3, 224, 224)
    return batch


def _train_step_fn(model, batch):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    def step():
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _adapter(vla_config, encoder: StaMoEncoder, target: str, with_encoder: bool):
    """(adapter model, processor, base) of a fresh tiny base with LoRA rank 8 and a `target` head."""
    from stamo_vla.vla import build_tiny

    base, processor = build_tiny(config=vla_config, seed=0)
    # head width = hidden / 4, the ratio of the paper-scale preset (1024 for Llama-2-7B's 4096)
    width = max(16, base.config.text_config.hidden_size // 4)
    cfg = StaMoAdapterConfig(target=target, lora_rank=8, head_width=width)
    shape = (encoder.config.num_state_tokens, encoder.config.state_dim)
    encoder_or_none = encoder if with_encoder else None
    return attach(base, cfg, stamo_encoder=encoder_or_none, target_shape=shape), processor, base


def _time_predict_action(model, processor, batch_size: int, shape: tuple[int, int], repeats: int) -> dict:
    """Seconds per `predict_action`: LoRA merged into the base vs `model` with the head off vs on.

    Args:
        model: the adapter (put in eval mode here; a deep copy is merged).
        processor: the base's processor.
        batch_size: observations per call.
        shape: (tokens, dim) of a StaMo state.
        repeats: timed rounds.
    """
    from stamo_vla.vla import build_prompt

    model.eval()
    merged_model = copy.deepcopy(model)
    with torch.no_grad():  # what `stamo-vla merge` writes to disk, kept in memory here
        merged_base = merged_model.vla.merge_and_unload()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(batch_size)]
    inputs = processor([build_prompt("pick up the bowl and place it on the plate")] * batch_size, images)
    args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    current = torch.randn(batch_size, *shape)
    return timed_rounds(
        {
            "merged_base": lambda: merged_base.predict_action(*args),
            "adapter_head_off": lambda: model.predict_action(*args),
            "adapter_head_on": lambda: model.predict_action(
                *args, return_future_state=True, current_state=current
            ),
        },
        repeats,
    )


def bench_preset(name: str, vla_config, batch_size: int, repeats: int) -> dict:
    """Training-step and `predict_action` times of one model preset, with the overheads as ratios.

    Args:
        name: the preset's name (recorded).
        vla_config: its OpenVLA config.
        batch_size: samples per step and observations per call.
        repeats: timed rounds.
    """
    torch.manual_seed(0)
    encoder = StaMoEncoder(tiny_config()).eval()
    shape = (encoder.config.num_state_tokens, encoder.config.state_dim)
    plain, processor, base = _adapter(vla_config, encoder, "none", False)
    cached, _, _ = _adapter(vla_config, encoder, "motion", False)
    live, _, _ = _adapter(vla_config, encoder, "motion", True)
    batch = _batch(processor, base, batch_size, shape)
    cache_batch = {k: v for k, v in batch.items() if k not in (K.STAMO_PIXELS, K.FUTURE_STAMO_PIXELS)}
    live_batch = {k: v for k, v in batch.items() if k not in (K.STATE, K.FUTURE_STATE)}
    train = timed_rounds(
        {
            "plain_lora": _train_step_fn(plain, cache_batch),
            "stamo_cached": _train_step_fn(cached, cache_batch),
            "stamo_live_encoder": _train_step_fn(live, live_batch),
        },
        repeats,
    )
    infer = _time_predict_action(cached, processor, batch_size, shape, repeats)
    return {
        "preset": name,
        "batch_size": batch_size,
        "train_step_s": train,
        "train_step_overhead": {
            "stamo_cached_vs_plain_lora": train["stamo_cached"] / train["plain_lora"] - 1,
            "stamo_live_encoder_vs_plain_lora": train["stamo_live_encoder"] / train["plain_lora"] - 1,
        },
        "predict_action_s": infer,
        "predict_action_overhead": {
            "head_off_vs_merged": infer["adapter_head_off"] / infer["merged_base"] - 1,
            "head_on_vs_head_off": infer["adapter_head_on"] / infer["adapter_head_off"] - 1,
        },
    }


def run(quick: bool = False) -> dict:
    from stamo_vla.vla import mid_config, tiny_config

    presets = (
        [("tiny", tiny_config(), 4)] if quick else [("tiny", tiny_config(), 4), ("mid", mid_config(), 4)]
    )
    repeats = 3 if quick else 7
    results = {name: bench_preset(name, cfg, bs, repeats) for name, cfg, bs in presets}
    for name, r in results.items():
        t, o = r["train_step_overhead"], r["predict_action_overhead"]
        print(
            f"[{name}] train step: StaMo cached {100 * t['stamo_cached_vs_plain_lora']:+.1f}%, live encoder "
            f"{100 * t['stamo_live_encoder_vs_plain_lora']:+.1f}% vs plain LoRA | predict_action: head off "
            f"{100 * o['head_off_vs_merged']:+.1f}% vs merged, head on {100 * o['head_on_vs_head_off']:+.1f}% vs off"
        )
    return results
