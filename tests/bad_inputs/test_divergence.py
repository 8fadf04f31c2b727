"""Training that diverges stops; non-finite weights are never saved, loaded or merged; configs that make no sense
are refused where they are declared."""

from __future__ import annotations

import errno
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from stamo_vla import cli, fileio
from stamo_vla.training.checkpoint import (
    CheckpointWriteError,
    TrainerState,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from stamo_vla.training.step import TrainingDiverged, train_step


# ------------------------------------------------------------------------------------------ the step
def test_a_non_finite_loss_stops_the_step_before_any_weight_changes(toy_model):
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.ones(4, 2)
    x[1, 0] = float("nan")  # e.g. a NaN state from a damaged target cache
    with pytest.raises(TrainingDiverged, match=r"at step 7: loss=nan, toy_loss=nan.*NaN/inf in \['x'\]"):
        train_step(model, [{"x": x}], opt, step=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TrainingDiverged, match=r"a non-finite loss weight \(--adapter.lambda_\*\)"):
        train_step(model, [{"x": torch.ones(4, 2), "scale": float("nan")}], opt, step=1)


def test_a_diverging_fine_tuning_run_stops_naming_the_step_and_saves_nothing(finetune_cfg):
    from stamo_vla.training.finetune import finetune

    cfg = finetune_cfg("--max_steps", "4", "--optim.lr", "1e30")  # finite, and far too high
    with pytest.raises(TrainingDiverged, match=r"training diverged at step [2-4]: .*--optim.lr"):
        finetune(cfg)
    run = cfg.run_path()
    assert not (run / "adapter").exists() and not (run / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ weights
def test_non_finite_weights_are_never_saved_loaded_or_merged(tmp_path, tiny_base_dir, tiny_adapter_dir):
    from stamo_vla.adapter import load_adapter, merge, save_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    model = load_adapter(OpenVLAForActionPrediction.from_pretrained(tiny_base_dir), tiny_adapter_dir)
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param[0, 0] = float("nan")
    with pytest.raises(fileio.NonFiniteWeightsError, match=rf"the adapter to save in .*1 tensors.*{name}"):
        save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(fileio.NonFiniteWeightsError, match="the adapter to merge"):
        merge(model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()

    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapter_dir, broken)
    weights = load_file(str(broken / "adapter_model.safetensors"))
    key = sorted(weights)[0]
    weights[key][..., 0] = float("inf")
    save_file(weights, str(broken / "adapter_model.safetensors"))
    with pytest.raises(fileio.NonFiniteWeightsError, match=rf"adapter_model.safetensors: 1 tensors .*{key}"):
        load_adapter(OpenVLAForActionPrediction.from_pretrained(tiny_base_dir), broken)


def test_checkpoints_with_non_finite_weights_are_never_written_or_resumed(tmp_path, toy_model):
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    good = save_checkpoint(tmp_path, TrainerState(step=1), model, opt)
    with torch.no_grad():
        model.w.weight[0, 0] = float("nan")
    with pytest.raises(fileio.NonFiniteWeightsError, match=r"the model of step 2 \(not saved\).*w.weight"):
        save_checkpoint(tmp_path, TrainerState(step=2), model, opt)
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    save_file(
        {"w.weight": torch.full((2, 2), float("nan")), "w.bias": torch.zeros(2)},
        str(good / "model" / "w.safetensors"),
    )
    with pytest.raises(
        fileio.NonFiniteWeightsError, match=r"w.safetensors: 1 tensors hold NaN or inf \(w.weight\)"
    ):
        load_checkpoint(good, opt)


def test_a_full_disk_names_the_file_the_space_needed_and_the_intact_checkpoint(
    tmp_path, monkeypatch, toy_model
):
    import stamo_vla.training.checkpoint as ckpt

    model = toy_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    train_step(model, [{"x": torch.ones(2, 2)}], opt)
    previous = save_checkpoint(tmp_path, TrainerState(step=1), model, opt)
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        if str(file).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(tmp_path, TrainerState(step=2), model, opt)
    message = str(err.value)
    assert "the disk filled while writing" in message and "step_00000002/optimizer.pt" in message
    assert "needs about 0.0 MiB" in message and "MiB are free now" in message
    assert f"the previous checkpoint {previous} is intact" in message
    assert verify_checkpoint(previous) is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]  # no temporary left
    monkeypatch.undo()
    assert cli.user_error(err.value) is err.value  # printed alone by the CLI


# ------------------------------------------------------------------------------------------ caches
def test_a_target_cache_shard_with_nan_states_is_refused_when_read(tmp_path, make_episode):
    from stamo_vla.data.episodes import episode_id
    from stamo_vla.data.target_cache import StaleTargetCacheError, TargetCache

    episode = make_episode(0, length=3)
    cache = TargetCache(tmp_path, {})
    path = cache.shard_path(episode_id(episode))
    path.parent.mkdir(parents=True)
    states = np.zeros((3, 2, 4), np.float32)
    states[1, 0, 2] = np.nan
    save_file({"states": torch.from_numpy(states)}, str(path))
    with pytest.raises(
        StaleTargetCacheError,
        match=r"holds non-finite values \(NaN or inf\).*Rerun the same `stamo-vla cache-targets`",
    ):
        cache.load_episode(episode)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--optim.decay_gamma", "-1"],
            r"optim.decay_gamma=-1.0 is not valid; it must be a finite number in \(0, 1\]",
        ),
        (["--optim.lr", "inf"], r"optim.lr=inf is not valid"),
        (["--optim.lr", "0"], r"optim.lr=0.0 is not valid; it must be a finite number in \(0, inf\)"),
        (["--optim.eps", "0"], r"optim.eps=0.0 is not valid"),
        (["--optim.weight_decay", "nan"], r"optim.weight_decay=nan is not valid"),
        (["--optim.betas", "[0.9,1.5]"], r"optim.betas\[1\]=1.5 is not valid; .* in \[0, 1\)"),
        (["--optim.max_grad_norm", "nan"], r"optim.max_grad_norm=nan is not valid"),
        (
            ["--adapter.lambda_action", "nan"],
            r"lambda_action=nan is not valid; it must be a finite number in \[0, inf\)",
        ),
        (["--adapter.lambda_future", "inf"], r"lambda_future=inf is not valid"),
        (["--adapter.lora_dropout", "1"], r"lora_dropout=1.0 is not valid"),
        (["--data.aug.crop_ratio", "nan"], r"crop_ratio=nan is not valid"),
    ],
)
def test_numeric_fields_out_of_range_are_refused_where_declared(finetune_argv, args, message, capsys):
    assert cli.main(["finetune", *finetune_argv("--max_steps", "1"), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_prompt_without_an_instruction_never_reaches_predict_action(tiny_base_dir):
    from stamo_vla.vla import OpenVLAProcessor

    processor = OpenVLAProcessor.from_pretrained(tiny_base_dir)
    image = np.zeros((224, 224, 3), np.uint8)
    for text in (
        "In: What action should the robot take to ?\nOut:",
        "In: What action should the robot take to  ?\nOut:",
        " ",
    ):
        with pytest.raises(ValueError, match="a prompt with no task instruction"):
            processor(text, image)
    assert (
        processor("In: What action should the robot take to pick up the bowl?\nOut:", image)[
            "input_ids"
        ].shape[0]
        == 1
    )
