"""Held-out metrics of a finished fine-tuning run: one unaugmented pass over the episodes it did not train on."""

from __future__ import annotations

import json

import pytest

from stamo_vla.study.heldout import HeldoutConfig, heldout_metrics, main
from stamo_vla.training.finetune import finetune

DATASET = "toy_push_no_noops"  # 8 episodes of 12 steps (tests/training/conftest.py)


@pytest.mark.slow
def test_heldout_scores_exactly_the_validation_episodes(tmp_path, tiny_finetune_cfg):
    overrides = ["--data.train_percent", "75", "--adapter.target", "none", "--max_steps", "2"]
    result = finetune(tiny_finetune_cfg(tmp_path / "run", *overrides))
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
