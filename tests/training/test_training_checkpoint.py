import json
import random

import numpy as np
import pytest
import torch

from stamo_vla.training.checkpoint import (
    TrainerState,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from stamo_vla.training.distributed import rng_state, seed_everything, set_rng_state
from stamo_vla.training.optim import OptimizerConfig, build_optimizer, build_scheduler
from stamo_vla.training.step import train_step


class _NoisyRegressor(torch.nn.Module):
    """Its loss draws fresh noise from the global RNG, like a diffusion loss."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def forward(self, batch):
        noise = torch.randn(batch.shape[0], 1)
        loss = ((self.net(batch) - batch.sum(1, keepdim=True) - 0.1 * noise) ** 2).mean()
        return loss, {"noise_mean": noise.mean().item()}

    def save_pretrained(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "weights.pt")

    def load(self, directory):
        self.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))


def _setup():
    seed_everything(0)
    model = _NoisyRegressor()
    cfg = OptimizerConfig(lr=0.05, warmup_steps=2, decay="cosine")
    opt = build_optimizer(model.parameters(), cfg)
    return model, opt, build_scheduler(opt, cfg, total_steps=6)


def _batch(step):
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(step))


def test_two_step_train_save_resume_equals_uninterrupted(tmp_path):
    model, opt, sched = _setup()
    full = [train_step(model, [_batch(s)], opt, sched, max_grad_norm=1.0)["loss"] for s in range(4)]

    model, opt, sched = _setup()
    first = [train_step(model, [_batch(s)], opt, sched, max_grad_norm=1.0)["loss"] for s in range(2)]
    save_checkpoint(tmp_path, TrainerState(step=2, data_state={"batch": 2}), model, opt, sched)
    torch.randn(100)  # the interrupted process goes on consuming randomness; the resume must not care

    model, opt, sched = _setup()  # a new process: fresh objects, then restore
    ckpt = find_latest_checkpoint(tmp_path)
    model.load(ckpt / "model")
    state = load_checkpoint(ckpt, opt, sched)
    assert (state.step, state.data_state) == (2, {"batch": 2})
    rest = [
        train_step(model, [_batch(s)], opt, sched, max_grad_norm=1.0)["loss"] for s in range(state.step, 4)
    ]
    assert first + rest == full  # bit-exact on CPU


def test_interrupted_write_keeps_last_good_checkpoint(tmp_path):
    model, opt, sched = _setup()
    good = save_checkpoint(tmp_path, TrainerState(step=1), model, opt, sched)

    class Crash(RuntimeError):
        pass

    def crash(directory):
        directory.mkdir(parents=True)
        (directory / "weights.pt").write_text("partial")
        raise Crash("killed mid-write")

    model.save_pretrained = crash
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, TrainerState(step=2), model, opt, sched)
    assert find_latest_checkpoint(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]  # no temp leftovers
    # a directory without trainer_state.json (e.g. copied half-way) is never picked
    (tmp_path / "checkpoints" / "step_00000009").mkdir()
    assert find_latest_checkpoint(tmp_path) == good


def test_keep_last_prunes_oldest(tmp_path):
    model, opt, _ = _setup()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, TrainerState(step=step), model, opt, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    info = json.loads((find_latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert info["step"] == 4 and info["world_size"] == 1


def test_rng_state_round_trip_covers_python_numpy_torch():
    seed_everything(3)
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_incomplete_checkpoint_is_reported(tmp_path):
    model, opt, _ = _setup()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path, opt)
