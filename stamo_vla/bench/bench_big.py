"""The openvla-7b-shaped path on a workstation: build, load, attach, one predict_action, merge (old and new).

    stamo-vla bench --only '[big]'                 # the exact openvla-7b architecture: ~31 GB of disk, ~30 min
    stamo-vla bench --only '[big]' --quick true    # the same steps at the tiny shape (seconds)

The checkpoint is random: the exact openvla-7b architecture (7,541,237,184 parameters, bf16, upstream tensor
names and 5 GB shards: four files) is built on the meta device and streamed to disk one tensor at a time, so
building it takes about 1 GiB of RAM, never the model. Each step then runs in a fresh process, which reports its
wall time and its peak RSS (``VmHWM``: file pages mapped from the checkpoint count too), so the steps do not
hide each other's memory. The merge is measured twice, side by side: the streaming merge of `stamo-vla merge`
and the in-memory merge it replaced (load, peft's ``merge_and_unload``, ``save_pretrained``). Each merged output
is deleted once measured; the base checkpoint and the adapter are deleted at the end unless ``keep`` is set.
Not part of the test suite (tests run it at the tiny shape).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

UPSTREAM_LORA_PARAMS = 110_828_288  # LoRA r=32 on upstream's targets (docs/reference/openvla.md §1.3)
UPSTREAM_PARAMS = 7_541_237_184
LORA_RANK = 32
RESULT = "BENCH_BIG_RESULT "
IN_MEMORY_MERGE_GIB = 20  # the in-memory merge of openvla-7b peaked at 16.6 GiB: skipped on smaller machines
STEPS = ("build", "load", "attach", "predict_action", "merge_streaming", "merge_in_memory")


def big_config(shape: str):
    """openvla-7b's config ("7b": `OpenVLAConfig()` defaults) or the tiny preset, bf16, with statistics."""
    from stamo_vla.vla import OpenVLAConfig
    from stamo_vla.vla.tiny import tiny_config, tiny_norm_stats

    if shape not in ("7b", "tiny"):
        raise ValueError(f"shape={shape!r}: expected '7b' or 'tiny'")
    config = OpenVLAConfig(norm_stats=tiny_norm_stats()) if shape == "7b" else tiny_config()
    config.dtype = "bfloat16"
    config.text_config.dtype = "bfloat16"
    return config


def _random_tensor(name: str, shape: tuple[int, ...], dtype, generator):
    """Weights that keep a forward pass finite: norms and layer scales 1, biases 0, the rest N(0, 0.02)."""
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1:  # norm weights, LayerScale factors
        return torch.ones(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)


def checkpoint_specs(shape: str) -> tuple[Any, dict[str, tuple[Any, tuple[int, ...]]]]:
    """The config of `shape` and its checkpoint's tensors (name -> (bf16, shape)), from a meta-device model."""
    import torch

    from stamo_vla.vla import OpenVLAForActionPrediction

    config = big_config(shape)
    with torch.device("meta"):
        skeleton = OpenVLAForActionPrediction(config)
    return config, {k: (torch.bfloat16, tuple(v.shape)) for k, v in skeleton.state_dict().items()}


def build_checkpoint(
    directory: str | Path, shape: str = "7b", seed: int = 0, max_shard_size: str = "5GB"
) -> dict:
    """Write a random checkpoint of `shape` in the upstream layout, one tensor in memory at a time.

    Args:
        directory: new or empty output directory.
        shape: "7b" (openvla-7b's architecture) or "tiny".
        seed: seed of the random weights.
        max_shard_size: upstream's "5GB" gives openvla-7b's four shards.

    Returns:
        {"num_parameters", "num_tensors", "shards", "bytes"}.
    """
    import torch

    from stamo_vla.adapter.streaming_merge import shard_bytes
    from stamo_vla.fileio import atomic_dir, save_sharded_weights, write_json_atomic
    from stamo_vla.vla.tiny import build_processor, tiny_config

    config, specs = checkpoint_specs(shape)
    generator = torch.Generator().manual_seed(seed)

    def produce(keys):
        for key in keys:
            yield key, _random_tensor(key, specs[key][1], torch.bfloat16, generator)

    with atomic_dir(directory, kind="openvla_checkpoint") as tmp:
        files = save_sharded_weights(tmp, specs, produce, shard_bytes(max_shard_size), {"format": "pt"})
        config.save_pretrained(str(tmp))
        text = config.text_config
        generation = {"bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id}
        write_json_atomic(tmp / "generation_config.json", {**generation, "pad_token_id": config.pad_token_id})
        write_json_atomic(tmp / "dataset_statistics.json", config.norm_stats)
        # the prompt's tokens only (ids far below the vocabulary); openvla-7b's Llama tokenizer is not needed
        build_processor(tiny_config()).save_pretrained(tmp)
    sizes = [math.prod(s) for _, s in specs.values()]
    return {
        "num_parameters": sum(sizes),
        "num_tensors": len(specs),
        "shards": len(files),
        "bytes": 2 * sum(sizes),
    }


def _load(base: Path):
    from stamo_vla.vla import OpenVLAForActionPrediction

    return OpenVLAForActionPrediction.from_pretrained(base).eval()


def _attach(model):
    from stamo_vla.adapter import StaMoAdapterConfig, attach

    return attach(model, StaMoAdapterConfig(target="none", lora_rank=LORA_RANK))


def step_attach(work: Path) -> dict:
    """Load, attach LoRA r=32 (timed), count its parameters, save the adapter (random lora_B) for the merges."""
    import torch

    from stamo_vla.adapter import save_adapter

    model = _load(work / "base")
    start = time.perf_counter()
    adapted = _attach(model)
    seconds = time.perf_counter() - start
    lora = sum(p.numel() for n, p in adapted.vla.named_parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.vla.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0, 1e-3, generator=generator))
    save_adapter(adapted, work / "adapter")
    return {
        "seconds": seconds,
        "lora_parameters": lora,
        "lora_matches_upstream": lora == UPSTREAM_LORA_PARAMS,
    }


def step_predict_action(work: Path) -> dict:
    """Load, then one `predict_action` on a 224 px observation (timed)."""
    import numpy as np
    import torch

    from stamo_vla.vla import OpenVLAProcessor, build_prompt

    model = _load(work / "base")
    processor = OpenVLAProcessor.from_pretrained(work / "base")
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    inputs = processor([build_prompt("put the bowl on the plate")], [image])
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    start = time.perf_counter()
    with torch.inference_mode():
        action = model.predict_action(**inputs)
    return {"seconds": time.perf_counter() - start, "action_finite": bool(np.isfinite(action).all())}


def step_merge(work: Path, streaming: bool) -> dict:
    """One merge (timed), its output's shard count, then the output deleted."""
    out = work / ("merged_streaming" if streaming else "merged_in_memory")
    start = time.perf_counter()
    if streaming:
        from stamo_vla.adapter.streaming_merge import merge_checkpoint

        merge_checkpoint(work / "base", work / "adapter", out)
    else:
        from stamo_vla.adapter import load_adapter, merge

        merge(load_adapter(_load(work / "base"), work / "adapter"), out)
    seconds = time.perf_counter() - start
    shards = len(list(out.glob("model*.safetensors")))
    shutil.rmtree(out)
    return {"seconds": seconds, "shards": shards}


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB: ``VmHWM`` where Linux reports it, else ``ru_maxrss``.

    ``ru_maxrss`` alone would not do in a child process: Linux carries the parent's peak over at exec.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_step(step: str, work: Path, shape: str) -> dict:
    """Run one step in this process; adds its peak RSS (GiB) and the peak it had before the step.

    Args:
        step: build | load | attach | predict_action | merge | merge_streaming.
        work: the working directory the steps share.
        shape: the shape of the base checkpoint (its preset name).
    """
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    start_rss = peak_rss_gib()
    if step == "build":
        begin = time.perf_counter()
        result = build_checkpoint(work / "base", shape)
        result["seconds"] = time.perf_counter() - begin
    elif step == "load":
        begin = time.perf_counter()
        model = _load(work / "base")
        result = {"seconds": time.perf_counter() - begin, "num_parameters": model.num_parameters()}
    elif step == "attach":
        result = step_attach(work)
    elif step == "predict_action":
        result = step_predict_action(work)
    else:
        result = step_merge(work, streaming=step == "merge_streaming")
    result["peak_rss_gib"] = peak_rss_gib()
    result["peak_rss_before_step_gib"] = start_rss
    return result


def measure(step: str, work: Path, shape: str) -> dict:
    """`run_step` in a fresh Python process (its own peak RSS); raises with the child's output on failure.

    Args:
        step: build | load | attach | predict_action | merge | merge_streaming.
        work: the working directory the steps share.
        shape: the shape of the base checkpoint (its preset name).
    """
    cmd = [sys.executable, "-m", "stamo_vla.bench.bench_big", step, str(work), shape]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench step {step} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def run(
    quick: bool = False, shape: str | None = None, work_dir: str | None = None, keep: bool = False
) -> dict:
    """Every step side by side; `quick` runs them at the tiny shape.

    Args:
        quick: the tiny shape instead of openvla-7b's (a smoke run of the same code).
        shape: "7b" or "tiny" (overrides `quick`).
        work_dir: where the checkpoint, adapter and merges go (default: a new temporary folder).
        keep: leave the checkpoint and adapter there.

    Returns:
        {"shape", "steps": {step: {seconds, peak_rss_gib, ...}}, "merge_peak_rss_in_memory_vs_streaming"}.
    """
    shape = shape or ("tiny" if quick else "7b")
    work = Path(work_dir or tempfile.mkdtemp(prefix="stamo_vla_bench_big_"))
    steps = {}
    try:
        for step in STEPS:
            if step == "merge_in_memory" and shape == "7b" and _memory_gib() < IN_MEMORY_MERGE_GIB:
                steps[step] = {
                    "skipped": f"needs ~{IN_MEMORY_MERGE_GIB} GiB of RAM, this machine has {_memory_gib():.0f}"
                }
                print(f"  {step}: {steps[step]['skipped']}", flush=True)
                continue
            print(f"  {step} ...", flush=True)
            steps[step] = measure(step, work, shape)
            shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in steps[step].items()}
            print(f"  {step}: {shown}", flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    old, new = steps["merge_in_memory"], steps["merge_streaming"]
    result = {
        "shape": shape,
        "steps": steps,
        "parameters_match_openvla_7b": steps["build"]["num_parameters"] == UPSTREAM_PARAMS,
    }
    if "skipped" not in old:
        result["merge_peak_rss_in_memory_vs_streaming"] = old["peak_rss_gib"] / new["peak_rss_gib"]
        result["merge_time_in_memory_vs_streaming"] = old["seconds"] / new["seconds"]
    return result


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


if __name__ == "__main__":
    print(RESULT + json.dumps(run_step(sys.argv[1], Path(sys.argv[2]), sys.argv[3])), flush=True)
