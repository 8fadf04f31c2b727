"""Released OpenVLA-OFT directories that are incomplete or damaged: held to the OpenVLA path's boundary checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from stamo_vla.vla import CheckpointError, OpenVLAOFTForActionPrediction

STEP = 5000


def _save_heads(directory, step: int, proprio_dim: int = 8, seed: int = 3) -> None:
    """``action_head--<step>_checkpoint.pt`` and ``proprio_projector--<step>_checkpoint.pt`` as upstream's trainer
    saves them (DDP ``module.`` keys) for the tiny model (LLM hidden size 32)."""
    from stamo_vla.vla.oft_modules import L1RegressionActionHead, ProprioProjector

    torch.manual_seed(seed)
    for name, module in (
        ("action_head", L1RegressionActionHead(32, 7, 48)),
        ("proprio_projector", ProprioProjector(proprio_dim, 32)),
    ):
        state = {f"module.{k}": v for k, v in module.state_dict().items()}
        torch.save(state, directory / f"{name}--{step}_checkpoint.pt")


@pytest.fixture(scope="module")
def released(tiny_base_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("released_oft") / "oft"
    shutil.copytree(tiny_base_dir, directory)
    _save_heads(directory, STEP)
    return directory


@pytest.fixture
def copy(released, tmp_path):
    path = tmp_path / "oft"
    shutil.copytree(released, path)
    return path


def _predict(model, proprio):
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    pixels = torch.zeros(1, 12, 224, 224)
    return model.predict_action(input_ids=ids, pixel_values=pixels, proprio=proprio, unnormalize=False)


@pytest.mark.slow
def test_a_missing_proprio_projector_is_never_ignored_silently(copy):
    (copy / f"proprio_projector--{STEP}_checkpoint.pt").unlink()  # an interrupted download
    with pytest.warns(UserWarning, match="has no proprio_projector--<step>_checkpoint.pt.*interrupted"):
        model = OpenVLAOFTForActionPrediction.from_pretrained(copy)
    with pytest.raises(ValueError, match=f"got proprio, but {copy} has no proprio_projector"):
        _predict(model, torch.zeros(1, 8))
    assert _predict(model, None).shape == (1, 8, 7)  # a checkpoint trained without proprio still runs


@pytest.mark.slow
def test_a_head_and_a_projector_of_different_steps_are_refused(copy):
    (copy / f"proprio_projector--{STEP}_checkpoint.pt").unlink()
    _save_heads(copy, STEP + 1000)
    (copy / f"action_head--{STEP + 1000}_checkpoint.pt").unlink()
    with pytest.raises(
        CheckpointError,
        match=rf"action head is from step {STEP} .* proprio projector from step {STEP + 1000}",
    ):
        OpenVLAOFTForActionPrediction.from_pretrained(copy)


@pytest.mark.slow
def test_a_non_finite_or_truncated_head_file_is_refused_naming_file_and_tensor(released, copy):
    head = copy / f"action_head--{STEP}_checkpoint.pt"
    state = torch.load(head, weights_only=True)
    state["module.model.fc2.weight"][0, 0] = float("nan")
    torch.save(state, head)
    with pytest.raises(
        CheckpointError, match=rf"{head.name} holds NaN/inf in 'module.model.fc2.weight' \(1 of"
    ):
        OpenVLAOFTForActionPrediction.from_pretrained(copy)

    intact = (released / head.name).read_bytes()
    head.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(CheckpointError, match=rf"{head.name} \(\d+ bytes\) is truncated or corrupt.*again"):
        OpenVLAOFTForActionPrediction.from_pretrained(copy)


@pytest.mark.slow
def test_output_loading_info_returns_the_model_and_its_info_as_transformers_does(released):
    model, info = OpenVLAOFTForActionPrediction.from_pretrained(released, output_loading_info=True)
    assert isinstance(model, OpenVLAOFTForActionPrediction) and model.uses_proprio
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    plain = OpenVLAOFTForActionPrediction.from_pretrained(released)
    proprio = torch.zeros(1, 8)
    np.testing.assert_array_equal(_predict(model, proprio), _predict(plain, proprio))
