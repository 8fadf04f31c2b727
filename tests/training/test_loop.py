"""The loop every recipe runs: fine-tuning, base training and StaMo pretraining resume alike."""

from __future__ import annotations

import json

import pytest
from test_base_training import base_cfg
from test_finetune import tiny_cfg

from stamo_vla.training.batches import LoaderBatches, resumed_position
from stamo_vla.training.checkpoint import find_latest_checkpoint
from stamo_vla.training.finetune import load_metrics


def _finetune(tmp_path, data_root, batch_size: int, max_steps: int):
    from stamo_vla.training.finetune import finetune

    args = ("--adapter.target", "none", "--save_steps", "2", "--resume", "true")
    cfg = tiny_cfg(tmp_path, data_root, *args, "--batch_size", str(batch_size), "--max_steps", str(max_steps))
    finetune(cfg)
    return cfg.run_dir


def _train_base(tmp_path, data_root, batch_size: int, max_steps: int):
    from stamo_vla.training.base_training import train_base

    args = ("--save_steps", "2", "--batch_size", str(batch_size), "--max_steps", str(max_steps))
    cfg = base_cfg(tmp_path, data_root, "base", *args)
    train_base(cfg)
    return cfg.run_dir


def _pretrain(tmp_path, data_root, batch_size: int, max_steps: int):
    from stamo_vla.data.stamo_frames import SyntheticSource
    from stamo_vla.stamo.configuration_stamo import tiny_config
    from stamo_vla.training.optim import OptimizerConfig
    from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig, pretrain

    cfg = PretrainStaMoConfig(
        model=tiny_config(),
        source=SyntheticSource(num_images=12),  # 10 training images, 2 held out
        num_heldout=2,
        run_dir=str(tmp_path / "pretrain"),
        max_steps=max_steps,
        batch_size=batch_size,
        optim=OptimizerConfig(lr=1e-3, warmup_steps=1),
        log_steps=1,
        save_steps=2,
        eval_sample_steps=1,
        interpolation_frames=3,
    )
    pretrain(cfg)
    return cfg.run_dir


RECIPES = {"finetune": _finetune, "train-base": _train_base, "pretrain": _pretrain}


def _next_sample(data_state: dict) -> int:
    """The first sample (per rank) not yet drawn, from a loader position or an epoch position within epoch 0."""
    batches = data_state["micro_batches"] if "micro_batches" in data_state else data_state["batch"]
    assert data_state.get("epoch", 0) == 0
    return batches * data_state["batch_size"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_resumes_with_a_changed_batch_size_the_same_way(recipe, tmp_path, toy_data_root, caplog):
    run = RECIPES[recipe]
    run_dir = run(tmp_path, toy_data_root, 2, 2)  # interrupted after step 2: 4 samples drawn, in batches of 2
    with caplog.at_level("WARNING", logger="stamo_vla.training.batches"):
        assert run(tmp_path, toy_data_root, 3, 3) == run_dir  # resumed with batches of 3
    assert (
        "batch_size changed from 2 to 3: 4 samples were consumed, so the data stream resumes at sample 6"
        in (caplog.text)
    )
    state = json.loads((find_latest_checkpoint(run_dir) / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["data_state"]["batch_size"] == 3
    assert _next_sample(state["data_state"]) == 9  # samples 6, 7 and 8 made step 3
    assert [m["step"] for m in load_metrics(run_dir) if "train/loss" in m] == [1, 2, 3]


def test_a_position_in_another_batch_size_resumes_at_the_first_unseen_sample(caplog):
    assert resumed_position(5, None, 4) == 5  # an old checkpoint without a batch size: unchanged
    assert resumed_position(6, 2, 4) == 3  # 12 samples = 3 batches of 4, no warning
    assert caplog.text == ""
    assert resumed_position(5, 2, 4) == 3  # 10 samples: the stream resumes at sample 12
    assert "resumes at sample 12" in caplog.text


def test_loader_batches_count_their_position_and_name_their_source_when_empty():
    class Resumable(list):
        def set_resume_position(self, consumed: int, batch_size: int) -> None:
            self.position = (consumed, batch_size)

    data = Resumable()
    stream = LoaderBatches(data, [["a"], ["b"]], 3, {"micro_batches": 4, "batch_size": 3}, "split X")
    assert data.position == (4, 3) and next(stream) == ["a"]
    assert stream.state_dict() == {"micro_batches": 5, "batch_size": 3}
    empty = LoaderBatches(Resumable(), [], 3, {}, "data.split='val' of [toy]")
    with pytest.raises(ValueError, match=r"no training samples: data.split='val' of \[toy\] has no episodes"):
        next(empty)
    with pytest.raises(ValueError, match=r"ran out after 2 batches \(split X\); set data.repeat=true"):
        next(stream), next(stream)
