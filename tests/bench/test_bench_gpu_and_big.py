"""The on-demand benchmarks: the GPU suite (--device cuda) and the openvla-7b-shaped path (big), at tiny shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stamo_vla import cli
from stamo_vla.bench import bench_big, bench_cuda, runner


def test_gpu_and_big_benchmarks_run_only_when_asked():
    assert runner.BenchConfig().names == [b for b in runner.BENCHMARKS if b not in ("big", "cuda")]
    assert runner.BenchConfig(device="cuda").names == ["cuda"]
    assert runner.BenchConfig(only=["big"]).names == ["big"]
    with pytest.raises(ValueError, match="device='tpu' is not valid"):
        runner.BenchConfig(device="tpu")


def test_cuda_bench_help_works_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--device", "cuda", "--help"])
    assert exit_.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_cuda_bench_is_skipped_with_a_clear_message_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.main(["--device", "cuda", "--output_dir", str(tmp_path)]) == 0
    assert "skipped: no CUDA device is visible to torch" in capsys.readouterr().out
    result = json.loads((tmp_path / "bench.json").read_text())["results"]["cuda"]
    assert result["skipped"].startswith("skipped: no CUDA device") and "make gpu-bench" in result["skipped"]


@pytest.mark.slow
def test_cuda_bench_code_paths_at_tiny_shape_on_cpu():
    from stamo_vla.vla.tiny import build_processor, tiny_config

    config = tiny_config()
    r = bench_cuda.run_all(
        config, build_processor(config), "cpu", torch.float32, (2, 16), repeats=1, batch_size=2
    )
    model = bench_cuda.build_model(config, "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and r[
        "parameters"
    ] == model.num_parameters()
    p = r["predict_action"]
    assert p["max_abs_action_difference"] == 0.0  # batched == one call per observation (fp32)
    assert p["speedup"] == pytest.approx(p["serial_s"] / p["batched_s"]) and p["batch_size"] == 2
    assert "SDPA only" in r["attention"]["skipped"]
    h = r["stamo_head"]
    assert set(h["train_step_s"]) == {"plain_lora", "stamo_cached"} and math.isfinite(
        h["train_step_overhead"]
    )
    assert h["predict_action_overhead"] == pytest.approx(
        h["predict_action_s"]["head_on"] / h["predict_action_s"]["head_off"] - 1
    )
    assert r["oft"]["action_chunk"] == 8 and r["oft"]["speedup_actions_per_s"] > 0


def test_big_bench_specs_are_openvla_7b_in_upstream_shards():
    from stamo_vla.fileio import plan_shards

    config, specs = bench_big.checkpoint_specs("7b")
    assert len(specs) == 982 and sum(math.prod(s) for _, s in specs.values()) == bench_big.UPSTREAM_PARAMS
    assert {d for d, _ in specs.values()} == {torch.bfloat16} and config.dtype in ("bfloat16", torch.bfloat16)
    sizes = {k: 2 * math.prod(s) for k, (_, s) in specs.items()}
    shards = plan_shards(sizes, 5 * 10**9)
    assert len(shards) == 4  # upstream's model-0000{1..4}-of-00004 (4.93 / 4.95 / 4.95 / 0.26 GB)
    assert [round(sum(sizes[k] for k in keys) / 1e9, 2) for keys in shards][-1] < 1
    from stamo_vla.vla import OpenVLAForActionPrediction

    with torch.device("meta"):  # the bench's attach on the 7B skeleton: upstream's LoRA r=32 count, exactly
        adapted = bench_big._attach(OpenVLAForActionPrediction(config))
    lora = sum(p.numel() for p in adapted.vla.parameters() if p.requires_grad)
    assert lora == bench_big.UPSTREAM_LORA_PARAMS == 110_828_288


@pytest.mark.slow
def test_big_bench_builds_loads_attaches_predicts_and_merges_at_tiny_shape(tmp_path):
    from stamo_vla.vla import OpenVLAForActionPrediction

    info = bench_big.build_checkpoint(tmp_path / "base", "tiny", max_shard_size="200KB")
    model = OpenVLAForActionPrediction.from_pretrained(tmp_path / "base")
    assert info["num_parameters"] == model.num_parameters() and info["shards"] == 3
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert info["bytes"] == sum(p.numel() * 2 for p in model.parameters())
    steps = {step: bench_big.run_step(step, tmp_path, "tiny") for step in bench_big.STEPS[2:]}
    assert steps["attach"]["lora_parameters"] > 0 and not steps["attach"]["lora_matches_upstream"]
    assert steps["predict_action"]["action_finite"]
    assert steps["merge_streaming"]["shards"] == 1 and steps["merge_in_memory"]["shards"] == 1
    assert not (tmp_path / "merged_streaming").exists()  # measured, then deleted
    for result in steps.values():
        assert result["seconds"] > 0 and result["peak_rss_gib"] >= result["peak_rss_before_step_gib"] > 0
    load = bench_big.measure("load", tmp_path, "tiny")  # a fresh process: its own peak RSS
    assert load["num_parameters"] == info["num_parameters"] and load["peak_rss_gib"] > 0
    with pytest.raises(RuntimeError, match="bench step load failed"):
        bench_big.measure("load", tmp_path / "missing", "tiny")
    assert np.isfinite(load["seconds"])
