"""The tiny OFT preset trains on RLDS data (L1 falls) and its adapter evaluates chunked in the harness."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from oft_helpers import OFT_DATASET, RecordingPool

from stamo_vla.configs import parse_config
from stamo_vla.training.finetune import finetune, load_metrics
from stamo_vla.training.finetune_config import FinetuneConfig

STEPS = 20


def oft_cfg(tmp_path, data_root, stamo_dir, *extra: str) -> FinetuneConfig:
    args = [
        "--config",
        "oft_tiny",
        "--data.data_root_dir",
        str(data_root),
        "--data.dataset_names",
        f"[{OFT_DATASET}]",
        "--data.shuffle_buffer_size",
        "64",
        "--stamo_path",
        str(stamo_dir),
        "--run_dir",
        str(tmp_path / "runs" / "oft"),
        "--batch_size",
        "4",
        "--log_steps",
        "1",
        "--max_steps",
        str(STEPS),
        "--save_steps",
        str(STEPS),
        *extra,
    ]
    return parse_config(FinetuneConfig, args, prefix="finetune_")


def test_preset_wires_the_data_to_the_variant(tmp_path):
    cfg = oft_cfg(tmp_path, tmp_path, tmp_path)
    head = cfg.adapter.action_head
    assert (head.name, head.action_chunk, head.num_images) == ("l1", 8, 2)
    assert cfg.data.action_chunk == 8 and cfg.data.load_wrist and cfg.data.load_proprio
    assert cfg.adapter.target == "state" and cfg.data.horizon == cfg.adapter.horizon == 8
    with pytest.raises(ValueError, match="flash_attention_2.*allowed: \\['sdpa', 'eager'\\]"):
        oft_cfg(tmp_path, tmp_path, tmp_path, "--attn_implementation", "flash_attention_2")
    paper = parse_config(FinetuneConfig, ["--config", "oft_paper", "--stamo_path", "x"], prefix="finetune_")
    assert (paper.batch_size, paper.max_steps, paper.optim.lr, paper.optim.decay_step_size) == (
        8,
        150005,
        5e-4,
        100000,
    )
    assert (
        paper.data.image_aug
        and paper.adapter.action_head.use_proprio
        and paper.adapter.action_head.num_images == 2
    )


@pytest.mark.slow
def test_tiny_oft_preset_trains_and_evaluates_chunked(tmp_path, oft_data_root, tiny_stamo_dir):
    from stamo_vla.evaluation import AdapterPolicyConfig, EvalConfig, build_policy
    from stamo_vla.libero.evaluation import evaluate

    result = finetune(oft_cfg(tmp_path, oft_data_root, tiny_stamo_dir))
    metrics = load_metrics(result.run_dir)
    l1 = [m["train/action_l1"] for m in metrics if "train/action_l1" in m]
    assert len(l1) == STEPS
    assert np.mean(l1[-5:]) < 0.8 * np.mean(l1[:5])
    assert all("train/future_mse" in m for m in metrics if "train/action_l1" in m)
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"oft_modules.safetensors", "stamo_head.safetensors", "adapter_model.safetensors"} <= files
    stats = json.loads((result.adapter_dir / "dataset_statistics.json").read_text())
    assert len(stats[OFT_DATASET]["proprio"]["q01"]) == 8

    cfg = EvalConfig(
        policy=AdapterPolicyConfig(
            checkpoint=str(result.run_dir / "base_model"),
            adapter_dir=str(result.adapter_dir),
            unnorm_key=OFT_DATASET,
            device="cpu",
        ),
        suites=["libero_spatial"],
        num_trials_per_task=1,
        max_steps=10,
        num_steps_wait=1,
        center_crop=False,
        video="none",
        num_workers=1,
        progress=False,
        output_dir=str(tmp_path / "eval"),
    )
    policy = build_policy(cfg)
    calls, predict = [], policy.policy.predict_batch
    policy.policy.predict_batch = lambda *a, **kw: calls.append(1) or predict(*a, **kw)
    catalog = types.SimpleNamespace(
        task_count=lambda suite: 1, task_instruction=lambda s, t: "push the red block left"
    )
    pool = RecordingPool()
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=policy, catalog=catalog)
    assert summary["overall"]["episodes"] == 1
    assert len(calls) == 2  # 10 steps with K = 8 executed open-loop: two policy calls
    assert len(pool.received) == 11
