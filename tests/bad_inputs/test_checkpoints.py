"""A damaged checkpoint: named, skipped on resume, never the reason an intact older one was deleted."""

from __future__ import annotations

import warnings

import pytest
import torch

from stamo_vla.training.checkpoint import (
    CheckpointCorruptError,
    TrainerState,
    find_resumable_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


class _Tiny(torch.nn.Module):
    def __init__(self, broken: bool = False):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)
        self.broken = broken

    def save_pretrained(self, directory):
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "w.safetensors"))
        if self.broken:  # a disk that loses the tail of a file
            data = (directory / "w.safetensors").read_bytes()
            (directory / "w.safetensors").write_bytes(data[:-3])


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def _truncate(file):
    file.write_bytes(file.read_bytes()[:-5])


def test_resume_falls_back_to_the_newest_intact_checkpoint_naming_the_broken_one(tmp_path):
    model = _Tiny()
    for step in (1, 2):
        save_checkpoint(tmp_path, TrainerState(step=step), model, _opt(model), keep_last=2)
    newest = list_checkpoints(tmp_path)[-1]
    _truncate(newest / "model" / "w.safetensors")
    with pytest.warns(UserWarning, match=f"{newest}.*w.safetensors is truncated"):
        found = find_resumable_checkpoint(tmp_path)
    assert found == list_checkpoints(tmp_path)[0]
    assert load_checkpoint(found, _opt(model)).step == 1


def test_loading_a_damaged_checkpoint_names_the_file_and_the_fix(tmp_path):
    model = _Tiny()
    path = save_checkpoint(tmp_path, TrainerState(step=1), model, _opt(model))
    _truncate(path / "optimizer.pt")
    assert "optimizer.pt" in verify_checkpoint(path)
    with pytest.raises(CheckpointCorruptError, match=r"optimizer\.pt.*Delete it"):
        load_checkpoint(path, _opt(model))


def test_an_unreadable_new_checkpoint_never_prunes_the_older_one(tmp_path):
    good = save_checkpoint(tmp_path, TrainerState(step=1), _Tiny(), _opt(_Tiny()), keep_last=1)
    with pytest.warns(UserWarning, match="does not read back"):
        save_checkpoint(tmp_path, TrainerState(step=2), _Tiny(broken=True), _opt(_Tiny()), keep_last=1)
    assert good in list_checkpoints(tmp_path)  # keep_last=1 would have deleted it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert find_resumable_checkpoint(tmp_path) == good
    save_checkpoint(tmp_path, TrainerState(step=3), _Tiny(), _opt(_Tiny()), keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003"]
