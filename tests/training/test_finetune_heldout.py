"""Held-out metrics of a finished fine-tuning run: one unaugmented pass over the episodes it did not train on."""

from __future__ import annotations

import json

import pytest

from stamo_vla.configs import parse_config
from stamo_vla.study.heldout import HeldoutConfig, heldout_metrics, main
from stamo_vla.training.finetune import finetune
from stamo_vla.training.finetune_config import FinetuneConfig

DATASET = "toy_push_no_noops"  # 8 episodes of 12 steps (tests/training/conftest.py)


@pytest.mark.slow
def test_heldout_scores_exactly_the_validation_episodes(tmp_path, toy_data_root):
    args = [
        "--config",
        "tiny",
        "--data.data_root_dir",
        str(toy_data_root),
        "--data.dataset_names",
        f"[{DATASET}]",
    ]
    args += ["--data.train_percent", "75", "--adapter.target", "none", "--run_dir", str(tmp_path / "run")]
    args += ["--max_steps", "2", "--batch_size", "2", "--data.shuffle_buffer_size", "16"]
    result = finetune(parse_config(FinetuneConfig, args, prefix="finetune_"))
    metrics = heldout_metrics(result.run_dir, batch_size=5)
    assert (
        metrics["split"] == "train[75%:]" and metrics["samples"] == 2 * 12
    )  # the last 2 of 8 episodes, every step
    assert 0.0 <= metrics["action_accuracy"] <= 1.0 and metrics["action_l1"] >= 0.0
    # the same numbers whatever the batch size: a per-sample average
    again = heldout_metrics(result.run_dir, batch_size=24)
    assert again["action_l1"] == pytest.approx(metrics["action_l1"], rel=1e-5)
    assert main(["--run_dir", str(result.run_dir)]) == 0
    written = json.loads((result.run_dir / "heldout_metrics.json").read_text())
    assert written["samples"] == 24
    # another dataset (the policy study's held-out collection): every episode of it, every step
    other = heldout_metrics(result.run_dir, batch_size=24, dataset_name=DATASET)
    assert other["split"] == "train" and other["datasets"] == [DATASET] and other["samples"] == 8 * 12


def test_heldout_config_names_what_is_missing():
    with pytest.raises(ValueError, match="pass --run_dir"):
        HeldoutConfig()
