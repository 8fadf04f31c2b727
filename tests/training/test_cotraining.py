"""Co-training: labeled samples give action + state losses, action-free samples state loss only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamo_vla import keys as K
from stamo_vla.configs import parse_config
from stamo_vla.training.finetune import FinetuneCollator, finetune, load_metrics
from stamo_vla.training.finetune_config import FinetuneConfig

LABELED, VIDEO = "toy_push_no_noops", "toy_push_video"


def sample(has_action: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, (1, 7)).astype(np.float32)
    return {
        K.IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        K.FUTURE_IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        K.INSTRUCTION: "push the red block left",
        K.ACTION: action if has_action else np.zeros_like(action),
        K.HAS_ACTION: has_action,
    }


@pytest.fixture(scope="module")
def model_and_collate():
    from stamo_vla.adapter import StaMoAdapterConfig, attach
    from stamo_vla.stamo import StaMoEncoder, tiny_config
    from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform, build_tiny

    torch.manual_seed(0)
    base, processor = build_tiny()
    encoder = StaMoEncoder(tiny_config()).eval()
    cfg = StaMoAdapterConfig(target="motion", head_width=16, lora_rank=4)
    model = attach(base, cfg, stamo_encoder=encoder)
    transform = OpenVLABatchTransform(processor, ActionTokenizer(base.action_vocab_size))
    return model, FinetuneCollator(transform, stamo_pixels=True)


def test_action_free_samples_give_state_loss_only(model_and_collate):
    model, collate = model_and_collate
    free_loss, free = model(collate([sample(False, 0), sample(False, 1)]))
    assert free["loss_action"] == 0.0 and free["future_mse"] > 0
    assert free_loss.item() == pytest.approx(free["future_mse"] + free["future_l1"], rel=1e-5)
    labeled_loss, labeled = model(collate([sample(True, 2), sample(True, 3)]))
    assert labeled["loss_action"] > 0 and labeled["future_mse"] > 0
    # in a mixed batch the action loss is the mean over the labeled rows' tokens only
    _, mixed = model(collate([sample(True, 2), sample(False, 0), sample(True, 3)]))
    assert mixed["loss_action"] == pytest.approx(labeled["loss_action"], rel=1e-5)


def test_action_free_rows_produce_no_gradient_through_the_action_loss(model_and_collate):
    model, collate = model_and_collate
    model.config.lambda_future = 0.0
    try:
        loss, _ = model(collate([sample(False, 0)]))
        assert loss.item() == 0.0 and loss.requires_grad
    finally:
        model.config.lambda_future = 1.0


@pytest.mark.slow
def test_cotraining_run_mixes_labeled_and_action_free_data(tmp_path, toy_cotrain_root, tiny_stamo_dir):
    args = [
        "--config",
        "tiny",
        "--data.data_root_dir",
        str(toy_cotrain_root),
        "--data.dataset_names",
        f"[{LABELED},{VIDEO}]",
        "--data.weights",
        "[1.0,4.0]",
        "--data.shuffle_buffer_size",
        "32",
        "--stamo_path",
        str(tiny_stamo_dir),
        "--run_dir",
        str(tmp_path / "cotrain"),
        "--batch_size",
        "4",
        "--max_steps",
        "4",
        "--save_steps",
        "4",
        "--log_steps",
        "1",
    ]
    result = finetune(parse_config(FinetuneConfig, args, prefix="finetune_"))
    logged = load_metrics(result.run_dir)
    assert len(logged) == 4 and all(m["train/future_mse"] > 0 for m in logged)
    import json

    stats = json.loads((result.adapter_dir / "dataset_statistics.json").read_text())
    assert set(stats) == {LABELED, VIDEO}
