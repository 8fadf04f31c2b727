"""Full-parameter base training (the study's "pretrained base"): every weight trains, exact resume, layout."""

from __future__ import annotations

import pytest

from stamo_vla.configs import parse_config
from stamo_vla.data.config import DataConfig
from stamo_vla.training.base_training import BaseTrainConfig, train_base
from stamo_vla.training.finetune import load_metrics

DATASET = "toy_push_no_noops"  # written by the toy_data_root fixture (tests/training/conftest.py)


def base_cfg(tmp_path, data_root, run: str, *extra: str) -> BaseTrainConfig:
    args = ["--model", "tiny", "--data.image_size", "224", "--data.data_root_dir", str(data_root)]
    args += ["--data.dataset_names", f"[{DATASET}]", "--data.shuffle_buffer_size", "32"]
    args += ["--run_dir", str(tmp_path / run), "--batch_size", "2", "--log_steps", "1", *extra]
    return parse_config(BaseTrainConfig, args)


def test_image_size_must_match_the_model():
    with pytest.raises(ValueError, match=r"data.image_size=224 does not match model='small'.*112"):
        BaseTrainConfig(model="small", data=DataConfig())


@pytest.mark.slow
def test_base_training_updates_every_weight_and_resumes_exactly(tmp_path, toy_data_root):
    import torch

    from stamo_vla.vla import OpenVLAForActionPrediction, build_tiny
    from stamo_vla.vla.tiny import tiny_config

    full = base_cfg(tmp_path, toy_data_root, "full", "--max_steps", "4", "--save_steps", "2")
    out = train_base(full)
    trained = OpenVLAForActionPrediction.from_pretrained(out)
    init, _ = build_tiny(config=tiny_config(), seed=full.seed)
    before = dict(init.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    # full-parameter training: the vision towers, projector and LLM all move (not a LoRA subset)
    for part in ("vision_backbone", "projector", "language_model"):
        assert any(n.startswith(part) for n in changed), part
    assert trained.config.norm_stats and DATASET in trained.config.norm_stats
    # the tokenizer learned merges on the training prompts: a toy instruction is a handful of tokens
    from stamo_vla.vla import OpenVLAProcessor
    from stamo_vla.vla.processing_openvla import build_prompt

    tokenizer = OpenVLAProcessor.from_pretrained(out).tokenizer
    assert len(tokenizer(build_prompt("push the red block left")).input_ids) < 20

    # interrupted after the step-2 checkpoint: resuming repeats steps 3 and 4 with the same losses
    import shutil

    from stamo_vla.training.checkpoint import list_checkpoints

    first = {m["step"]: m["train/loss"] for m in load_metrics(full.run_dir) if "train/loss" in m}
    shutil.rmtree(list_checkpoints(full.run_dir)[-1])
    shutil.rmtree(out)
    (tmp_path / "full" / "metrics.jsonl").unlink()
    train_base(full)
    again = {m["step"]: m["train/loss"] for m in load_metrics(full.run_dir) if "train/loss" in m}
    assert sorted(again) == [3, 4]
    assert [again[s] for s in (3, 4)] == [first[s] for s in (3, 4)]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_a_rerun_finishes(tmp_path, toy_data_root, monkeypatch):
    import os
    import signal

    from stamo_vla.training import loop as step_module  # the loop every recipe runs
    from stamo_vla.training.checkpoint import find_latest_checkpoint
    from stamo_vla.training.preemption import TrainingInterrupted

    real_step = step_module.train_step
    calls = []

    def step_then_sigterm(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the scheduler's signal arrives during step 3 of 6 (saves every 4)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(step_module, "train_step", step_then_sigterm)
    cfg = base_cfg(tmp_path, toy_data_root, "run", "--max_steps", "6", "--save_steps", "4")
    with pytest.raises(TrainingInterrupted) as stopped:
        train_base(cfg)
    assert stopped.value.step == 3 and find_latest_checkpoint(cfg.run_dir).name.endswith("3")
    monkeypatch.setattr(step_module, "train_step", real_step)
    out = train_base(cfg)  # resumes at step 3 and writes the model
    steps = [m["step"] for m in load_metrics(cfg.run_dir) if "train/loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6] and (out / "config.json").is_file()
    assert train_base(cfg) == out  # a finished run rerun rewrites only its own output
