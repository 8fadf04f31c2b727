"""GPU benchmarks at the openvla-7b shape (random init, bf16), each comparison measured side by side in one run.

    stamo-vla bench --device cuda                      # everything below, ~5 min on one H100
    stamo-vla bench --device cuda --quick true         # fewer repeats
    make gpu-bench                                     # the same on a bare CUDA machine (see the Makefile)

1. ``predict_action``: one batched call for 8 observations vs one call per observation.
2. The StaMo head: its overhead at inference (future state read from the same pass vs actions only) and in a
   LoRA training step with cached targets (StaMo ``motion`` target vs plain LoRA, same batch, bf16 autocast).
3. OFT parallel decoding (8 actions from one pass, L1 head) vs 7 autoregressive action tokens: actions/s.
4. Attention: SDPA vs flash-attention 2 for batched ``predict_action`` (when flash-attn is installed).

Absolute times come with the device name; the ratios are the numbers to compare across machines. Without a CUDA
device every benchmark here is skipped with a message saying so (tests run the same code on CPU at tiny shape).
"""

from __future__ import annotations

import contextlib
import gc

import numpy as np
import torch

from stamo_vla import keys as K
from stamo_vla.bench._common import timed_rounds
from stamo_vla.bench.bench_predict_action import INSTRUCTIONS

BATCH = 8
LORA_RANK = 32
STATE_SHAPE_7B = (2, 1024)  # StaMo's 2 tokens x 1024 dims (paper scale)


def no_gpu_message() -> str | None:
    """Why the CUDA benchmarks cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return (
            "skipped: no CUDA device is visible to torch (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda}). Run `stamo-vla bench --device cuda` "
            "or `make gpu-bench` on a machine with an NVIDIA GPU."
        )
    return None


def build_model(config, device: str, dtype: torch.dtype):
    """A random-init OpenVLA built directly on `device` in `dtype` (a 7B model never passes through fp32 RAM).

    Args:
        config: the OpenVLA config to build.
        device: the device the weights are created on.
        dtype: the weights' dtype.
    """
    from stamo_vla.vla import OpenVLAForActionPrediction

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = OpenVLAForActionPrediction(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _sync(fn, device: str):
    def call():
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return call


def _inputs(processor, batch_size: int, device: str, dtype: torch.dtype) -> dict:
    from stamo_vla.vla import build_prompt

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch_size)]
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)]) for i in range(batch_size)]
    enc = processor(prompts, images)
    return {
        "pixel_values": enc["pixel_values"].to(device, dtype),
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].to(device),
    }


def bench_batched_predict(model, processor, device: str, repeats: int, batch_size: int = BATCH) -> dict:
    """Seconds for `batch_size` observations: one batched `predict_action` vs one call per observation.

    Args:
        model: the OpenVLA model.
        processor: its processor.
        device: the device the model runs on.
        repeats: timed rounds.
        batch_size: observations per batch.
    """
    inputs = _inputs(processor, batch_size, device, model.dtype)
    rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(batch_size)]
    with torch.inference_mode():
        batched = model.predict_action(**inputs)
        serial = np.concatenate([model.predict_action(**row) for row in rows])
        times = timed_rounds(
            {
                "batched": _sync(lambda: model.predict_action(**inputs), device),
                "serial": _sync(lambda: [model.predict_action(**row) for row in rows], device),
            },
            repeats,
        )
    return {
        "batch_size": batch_size,
        "batched_s": times["batched"],
        "serial_s": times["serial"],
        "batched_obs_per_s": batch_size / times["batched"],
        "speedup": times["serial"] / times["batched"],
        "max_abs_action_difference": float(np.abs(batched - serial).max()),
    }


def bench_attention(model, processor, device: str, repeats: int, batch_size: int = BATCH) -> dict:
    """Batched `predict_action` with the LLM on SDPA vs flash-attention 2 (skipped without flash-attn).

    Args:
        model: the OpenVLA model.
        processor: its processor.
        device: the device the model runs on.
        repeats: timed rounds.
        batch_size: observations per batch.
    """
    from stamo_vla.optional import is_available

    if not device.startswith("cuda") or not is_available("flash_attn"):
        return {"skipped": "flash-attn is not installed (extra 'flash') or no CUDA device: SDPA only"}
    inputs = _inputs(processor, batch_size, device, model.dtype)
    llm = model.language_model

    def run_with(implementation: str):
        def call():
            llm.set_attn_implementation(implementation)
            return model.predict_action(**inputs)

        return _sync(call, device)

    with torch.inference_mode():
        times = timed_rounds({"sdpa": run_with("sdpa"), "flash": run_with("flash_attention_2")}, repeats)
    llm.set_attn_implementation("sdpa")
    return {
        "sdpa_s": times["sdpa"],
        "flash_attention_2_s": times["flash"],
        "speedup": times["sdpa"] / times["flash"],
    }


def _attached(config, device: str, dtype: torch.dtype, state_shape: tuple[int, int], **adapter_kwargs):
    """A fresh random base with LoRA r=32 (upstream's targets) and the given adapter settings."""
    from stamo_vla.adapter import StaMoAdapterConfig, attach

    base = build_model(config, device, dtype)
    width = max(16, config.text_config.hidden_size // 4)  # 1024 for Llama-2-7B, the paper-scale head
    cfg = StaMoAdapterConfig(head_width=width, lora_rank=LORA_RANK, **adapter_kwargs)
    with contextlib.redirect_stdout(None):  # the parameter summary, once per model
        return attach(base, cfg, target_shape=state_shape)


def _train_step(model, batch: dict, device: str):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def step():
        with autocast:
            loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _sync(step, device)


def _train_batch(processor, model, device: str, state_shape: tuple[int, int], batch_size: int) -> dict:
    from stamo_vla.adapter.modeling_adapter import base_model_of
    from stamo_vla.bench.bench_adapter import _batch

    batch = _batch(processor, base_model_of(model.vla), batch_size, state_shape)
    batch = {k: v for k, v in batch.items() if k not in (K.STAMO_PIXELS, K.FUTURE_STAMO_PIXELS)}  # cached
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def bench_stamo_head(
    config, processor, device: str, dtype, state_shape, repeats: int, batch_size: int = BATCH
):
    """StaMo head overhead: LoRA training step with cached targets vs plain LoRA; inference head on vs off.

    Args:
        config: the OpenVLA config of the base.
        processor: its processor.
        device: the device the models run on.
        dtype: the models' dtype.
        state_shape: (num_state_tokens, state_dim) of the StaMo targets.
        repeats: timed rounds.
        batch_size: samples per batch.
    """
    plain = _attached(config, device, dtype, state_shape, target="none").train()
    stamo = _attached(config, device, dtype, state_shape, target="motion").train()
    batch = _train_batch(processor, stamo, device, state_shape, batch_size=max(1, batch_size // 2))
    train = timed_rounds(
        {"plain_lora": _train_step(plain, batch, device), "stamo_cached": _train_step(stamo, batch, device)},
        repeats,
    )
    del plain
    _free(device)
    stamo.eval()
    inputs = _inputs(processor, batch_size, device, dtype)
    current = torch.randn(batch_size, *state_shape, device=device)
    with torch.inference_mode():
        infer = timed_rounds(
            {
                "head_off": _sync(lambda: stamo.predict_action(**inputs), device),
                "head_on": _sync(
                    lambda: stamo.predict_action(**inputs, return_future_state=True, current_state=current),
                    device,
                ),
            },
            repeats,
        )
    return {
        "train_step_s": train,
        "train_step_overhead": train["stamo_cached"] / train["plain_lora"] - 1,
        "predict_action_s": infer,
        "predict_action_overhead": infer["head_on"] / infer["head_off"] - 1,
    }, stamo


def bench_oft(
    config, processor, tokens_model, device: str, dtype, state_shape, repeats: int, batch_size: int = BATCH
) -> dict:
    """Actions/s: OFT parallel decoding (8 actions, one pass) vs the token adapter's 7 tokens per action.

    Args:
        config: the OpenVLA config of the base.
        processor: its processor.
        tokens_model: the token adapter model compared against.
        device: the device the models run on.
        dtype: the models' dtype.
        state_shape: (num_state_tokens, state_dim) of the StaMo targets.
        repeats: timed rounds.
        batch_size: observations per batch.
    """
    from stamo_vla.adapter.action_heads import L1ActionHead

    chunk = 8
    oft = _attached(
        config, device, dtype, state_shape, target="state", action_head=L1ActionHead(action_chunk=chunk)
    ).eval()
    inputs = _inputs(processor, batch_size, device, dtype)
    with torch.inference_mode():
        times = timed_rounds(
            {
                "tokens": _sync(lambda: tokens_model.predict_action(**inputs), device),
                "oft": _sync(lambda: oft.predict_action(**inputs), device),
            },
            repeats,
        )
    return {
        "action_chunk": chunk,
        "tokens_actions_per_s": batch_size / times["tokens"],
        "oft_actions_per_s": batch_size * chunk / times["oft"],
        "speedup_actions_per_s": times["tokens"] * chunk / times["oft"],
    }


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_all(
    config, processor, device: str, dtype: torch.dtype, state_shape, repeats: int, batch_size: int = BATCH
) -> dict:
    """Every benchmark above on one shape; models are built one or two at a time and freed in between.

    Args:
        config: the OpenVLA config (openvla-7b's, or a tiny one in tests).
        processor: makes the prompts and pixels.
        device: "cuda" (or "cpu" in tests).
        dtype: weight dtype of the random models.
        state_shape: StaMo state (tokens, dims) of the head's targets.
        repeats: timed rounds per comparison.
        batch_size: observations per `predict_action` call (training steps use half).
    """
    model = build_model(config, device, dtype)
    results = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "predict_action": bench_batched_predict(model, processor, device, repeats, batch_size),
        "attention": bench_attention(model, processor, device, repeats, batch_size),
    }
    del model
    _free(device)
    results["stamo_head"], stamo = bench_stamo_head(
        config, processor, device, dtype, state_shape, repeats, batch_size
    )
    results["oft"] = bench_oft(config, processor, stamo, device, dtype, state_shape, repeats, batch_size)
    del stamo
    _free(device)
    return results


def run(quick: bool = False) -> dict:
    """The GPU benchmarks at the openvla-7b shape in bf16; a skip message without a CUDA device."""
    from stamo_vla.vla import OpenVLAConfig
    from stamo_vla.vla.tiny import build_processor, tiny_config, tiny_norm_stats

    message = no_gpu_message()
    if message is not None:
        print(message)
        return {"skipped": message}
    config = OpenVLAConfig(norm_stats=tiny_norm_stats())
    processor = build_processor(tiny_config())  # prompt ids only; openvla-7b's Llama tokenizer is not needed
    results = run_all(config, processor, "cuda", torch.bfloat16, STATE_SHAPE_7B, repeats=3 if quick else 10)
    results["device"] = torch.cuda.get_device_name(0)
    results["dtype"] = "bfloat16"
    _print(results)
    return results


def _print(r: dict) -> None:
    p, h, o, a = r["predict_action"], r["stamo_head"], r["oft"], r["attention"]
    print(f"openvla-7b shape, bf16, {r['device']}:")
    print(
        f"  predict_action x{p['batch_size']}: batched {p['batched_s'] * 1e3:.1f} ms vs serial "
        f"{p['serial_s'] * 1e3:.1f} ms -> {p['speedup']:.2f}x"
    )
    print(
        f"  StaMo head: train step {100 * h['train_step_overhead']:+.1f}% vs plain LoRA "
        f"({h['train_step_s']['plain_lora'] * 1e3:.1f} ms), predict_action {100 * h['predict_action_overhead']:+.1f}%"
    )
    print(
        f"  OFT: {o['oft_actions_per_s']:.1f} vs tokens {o['tokens_actions_per_s']:.1f} actions/s "
        f"-> {o['speedup_actions_per_s']:.2f}x"
    )
    print("  attention: " + (a["skipped"] if "skipped" in a else f"flash-attn {a['speedup']:.2f}x vs SDPA"))
