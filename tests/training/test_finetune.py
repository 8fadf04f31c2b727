"""Fine-tuning recipe on the tiny model: what trains, what is saved, exact resume, the target cache."""

from __future__ import annotations

import json

import pytest

from stamo_vla.configs import parse_config
from stamo_vla.training.finetune import finetune, load_metrics
from stamo_vla.training.finetune_config import FinetuneConfig

DATASET = "toy_push_no_noops"  # written by the toy_data_root fixture (tests/training/conftest.py)


def tiny_cfg(tmp_path, data_root, *extra: str) -> FinetuneConfig:
    args = [
        "--config",
        "tiny",
        "--data.data_root_dir",
        str(data_root),
        "--data.dataset_names",
        f"[{DATASET}]",
        "--data.shuffle_buffer_size",
        "64",
        "--run_dir",
        str(tmp_path / "runs" / "toy"),
        "--batch_size",
        "4",
        "--log_steps",
        "1",
        *extra,
    ]
    return parse_config(FinetuneConfig, args, prefix="finetune_")


def losses(run_dir, key="train/loss"):
    return {m["step"]: m[key] for m in load_metrics(run_dir) if key in m}


@pytest.mark.slow
def test_tiny_finetune_motion_target_trains_and_writes_the_adapter(tmp_path, toy_data_root, tiny_stamo_dir):
    from stamo_vla.adapter.attach import frozen_state_digest
    from stamo_vla.vla import OpenVLAForActionPrediction

    cfg = tiny_cfg(
        tmp_path, toy_data_root, "--max_steps", "12", "--save_steps", "6", "--stamo_path", str(tiny_stamo_dir)
    )
    result = finetune(cfg)
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "stamo_head.safetensors",
        "stamo_adapter_config.json",
        "dataset_statistics.json",
    } <= files
    stats = json.loads((result.adapter_dir / "dataset_statistics.json").read_text())
    assert list(stats) == [DATASET] and stats[DATASET]["action"]["mask"] == [True] * 6 + [False]
    loss = losses(result.run_dir)
    assert sorted(loss) == list(range(1, 13))
    assert loss[12] < loss[1]
    for key in ("train/action_accuracy", "train/action_l1", "train/future_mse", "train/future_cosine"):
        assert len(losses(result.run_dir, key)) == 12
    # the base checkpoint on disk is untouched by training: the saved adapter holds every change
    base = OpenVLAForActionPrediction.from_pretrained(result.run_dir / "base_model")
    fresh = OpenVLAForActionPrediction.from_pretrained(result.run_dir / "base_model")
    assert frozen_state_digest(base) == frozen_state_digest(fresh)
    assert (result.run_dir / "config.yaml").is_file()
    assert [p.name for p in (result.run_dir / "checkpoints").iterdir()] == ["step_00000012"]


@pytest.mark.slow
def test_resume_continues_the_same_loss_sequence(tmp_path, toy_data_root):
    straight = finetune(
        tiny_cfg(
            tmp_path / "a",
            toy_data_root,
            "--adapter.target",
            "none",
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--keep_last",
            "5",
        )
    )
    first = finetune(
        tiny_cfg(
            tmp_path / "b", toy_data_root, "--adapter.target", "none", "--max_steps", "3", "--save_steps", "3"
        )
    )
    resumed = finetune(
        tiny_cfg(
            tmp_path / "b",
            toy_data_root,
            "--adapter.target",
            "none",
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--resume",
            "true",
        )
    )
    assert first.run_dir == resumed.run_dir
    a, b = losses(straight.run_dir), losses(resumed.run_dir)
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]


@pytest.mark.slow
def test_target_cache_replaces_the_encoder(tmp_path, toy_data_root, tiny_stamo_dir):
    from stamo_vla.data.target_cache import build_target_cache
    from stamo_vla.stamo import StaMoEncoder

    build_target_cache(
        toy_data_root, DATASET, StaMoEncoder.from_pretrained(tiny_stamo_dir), out_dir=tmp_path / DATASET
    )
    cfg = tiny_cfg(
        tmp_path,
        toy_data_root,
        "--adapter.target",
        "state",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--data.use_target_cache",
        "true",
        "--data.target_cache_root",
        str(tmp_path),
    )
    result = finetune(cfg)
    assert len(losses(result.run_dir, "train/future_mse")) == 2


def test_config_errors_name_the_problem(tmp_path, toy_data_root):
    with pytest.raises(ValueError, match="needs StaMo targets"):
        tiny_cfg(tmp_path, toy_data_root, "--adapter.target", "state")
    with pytest.raises(ValueError, match=r"attn_implementation='flash' is not valid"):
        tiny_cfg(tmp_path, toy_data_root, "--adapter.target", "none", "--attn_implementation", "flash")
    with pytest.raises(ValueError, match="Did you mean 'tiny'"):
        parse_config(FinetuneConfig, ["--config", "tinny"], prefix="finetune_")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_the_same_adapter_format(tmp_path, toy_data_root):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(repo / "recipes" / "finetune_libero.py"),
        "--config",
        "tiny",
        "--data.data_root_dir",
        str(toy_data_root),
        "--data.dataset_names",
        f"[{DATASET}]",
        "--data.shuffle_buffer_size",
        "16",
        "--run_dir",
        str(tmp_path / "ddp"),
        "--adapter.target",
        "none",
        "--batch_size",
        "2",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--log_steps",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp"
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "stamo_adapter_config.json",
        "dataset_statistics.json",
    } <= {p.name for p in (run / "adapter").iterdir()}
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    assert len(losses(run)) == 2


@pytest.mark.slow
def test_decoded_frame_cache_keeps_the_first_50_losses_bitwise(tmp_path, toy_data_root):
    def run(name, cache_mb):
        extra = ["--adapter.target", "none", "--max_steps", "50", "--save_steps", "0", "--batch_size", "2"]
        cfg = tiny_cfg(tmp_path / name, toy_data_root, *extra, "--data.frame_cache_mb", str(cache_mb))
        return losses(finetune(cfg).run_dir)

    old, new = run("old", 0), run("new", 64)
    assert sorted(old) == list(range(1, 51))
    assert [old[s] for s in range(1, 51)] == [new[s] for s in range(1, 51)]  # exact equality, not approx


@pytest.mark.slow
def test_bf16_autocast_on_the_cpu_trains_near_float32_and_saves_float32_weights(tmp_path, toy_data_root):
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    def run(name, precision):
        AcceleratorState._reset_state(
            True
        )  # accelerate keeps one precision per process; a CLI run is its own
        extra = ["--adapter.target", "none", "--max_steps", "3", "--save_steps", "0", "--batch_size", "2"]
        cfg = tiny_cfg(tmp_path / name, toy_data_root, *extra, "--mixed_precision", precision)
        return finetune(cfg).run_dir

    try:
        fp32_dir, bf16_dir = run("fp32", "no"), run("bf16", "bf16")
    finally:
        AcceleratorState._reset_state(True)  # the next test's run starts from a fresh state
    fp32, bf16 = losses(fp32_dir), losses(bf16_dir)
    assert sorted(bf16) == [1, 2, 3]
    # the same batch and initialization: the first losses differ only by bf16 rounding, and they do differ
    assert bf16[1] != fp32[1] and bf16[1] == pytest.approx(fp32[1], rel=0.05)
    weights = next((bf16_dir / "adapter").glob("*.safetensors"))
    assert {str(t.dtype) for t in load_file(weights).values()} == {"torch.float32"}
