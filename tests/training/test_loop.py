"""The loop every recipe runs: fine-tuning, base training and StaMo pretraining resume alike."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import pytest
import torch
import yaml
from test_base_training import base_cfg
from test_finetune import tiny_cfg

from stamo_vla.training.batches import EpochBatches, LoaderBatches, resumed_position
from stamo_vla.training.checkpoint import find_latest_checkpoint
from stamo_vla.training.finetune import load_metrics
from stamo_vla.training.optim import OptimizerConfig
from stamo_vla.training.run_config import RunConfig


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


def _pretrain_cfg(tmp_path, batch_size: int, max_steps: int, lr: float = 1e-3, state_dim: int | None = None):
    from stamo_vla.data.stamo_frames import SyntheticSource
    from stamo_vla.stamo.configuration_stamo import tiny_config
    from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

    model = tiny_config()
    model.state_dim = state_dim or model.state_dim
    return PretrainStaMoConfig(
        model=model,
        source=SyntheticSource(num_images=12),  # 10 training images, 2 held out
        num_heldout=2,
        run_dir=str(tmp_path / "pretrain"),
        max_steps=max_steps,
        batch_size=batch_size,
        optim=OptimizerConfig(lr=lr, warmup_steps=1),
        log_steps=1,
        save_steps=2,
        eval_sample_steps=1,
        interpolation_frames=3,
    )


def _pretrain(tmp_path, data_root, batch_size: int, max_steps: int):
    from stamo_vla.training.stamo_pretrain import pretrain

    cfg = _pretrain_cfg(tmp_path, batch_size, max_steps)
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


def _changed_finetune(tmp_path, data_root, max_steps: int, lr: float, fixed_change: bool):
    from stamo_vla.training.finetune import finetune

    args = ["--adapter.target", "none", "--save_steps", "2", "--resume", "true", "--optim.lr", str(lr)]
    args += ["--max_steps", str(max_steps), *(["--adapter.lora_rank", "4"] if fixed_change else [])]
    return tiny_cfg(tmp_path, data_root, *args), finetune


def _changed_train_base(tmp_path, data_root, max_steps: int, lr: float, fixed_change: bool):
    from stamo_vla.training.base_training import train_base

    args = ["--save_steps", "2", "--max_steps", str(max_steps), "--optim.lr", str(lr)]
    return base_cfg(
        tmp_path, data_root, "base", *args, *(["--model", "mid"] if fixed_change else [])
    ), train_base


def _changed_pretrain(tmp_path, data_root, max_steps: int, lr: float, fixed_change: bool):
    from stamo_vla.training.stamo_pretrain import pretrain

    return _pretrain_cfg(tmp_path, 2, max_steps, lr, state_dim=32 if fixed_change else None), pretrain


# recipe -> (its config and entry point, a field its checkpoint fixes)
CHANGED = {
    "finetune": (_changed_finetune, "adapter.lora_rank"),
    "train-base": (_changed_train_base, "model"),
    "pretrain": (_changed_pretrain, "model.state_dim"),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(CHANGED))
def test_every_recipe_refuses_a_fixed_change_and_records_allowed_ones_the_same_way(
    recipe, tmp_path, toy_data_root
):
    from stamo_vla.training.resume_config import CHANGES_FILE, HISTORY_DIR, ResumeConfigError

    build, fixed = CHANGED[recipe]
    first, run = build(tmp_path, toy_data_root, 2, 0.005, fixed_change=False)
    run(first)
    run_dir = Path(first.run_dir)
    old_config = (run_dir / "config.yaml").read_text()
    changed, _ = build(tmp_path, toy_data_root, 3, 0.005, fixed_change=True)
    recorded, requested = attrgetter(fixed)(first), attrgetter(fixed)(changed)
    expected = f"{fixed}: checkpoint {recorded!r}, now {requested!r}"  # fine-tuning compares with the adapter
    if recipe != "finetune":  # the others with the recorded config, and name the flag that restores it
        expected = f"{fixed}: recorded {recorded!r} (in {run_dir / 'config.yaml'}), requested {requested!r}"
        expected += f". Resume with the original values (--{fixed} {recorded})"
    with pytest.raises(ResumeConfigError, match=re.escape(expected)):
        run(changed)
    assert (run_dir / "config.yaml").read_text() == old_config  # nothing was recorded or overwritten
    assert not (run_dir / CHANGES_FILE).exists()
    with pytest.warns(UserWarning, match=r"optim\.lr: 0\.005 -> 0\.001"):
        run(build(tmp_path, toy_data_root, 3, 0.001, fixed_change=False)[0])
    changes = [json.loads(line) for line in (run_dir / CHANGES_FILE).read_text().splitlines()]
    assert changes == [
        {"step": 2, "changes": {"max_steps": {"old": 2, "new": 3}, "optim.lr": {"old": 0.005, "new": 0.001}}}
    ]
    assert (run_dir / HISTORY_DIR / "config_until_step_00000002.yaml").read_text() == old_config
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.001
    lrs = {m["step"]: m["train/lr"] for m in load_metrics(run_dir) if "train/lr" in m}
    assert lrs[3] == pytest.approx(0.001)  # the change took effect at step 3


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


class _Toy(torch.nn.Module):
    """``forward(batch) -> (loss, metrics)`` and ``save_pretrained``: what the loop asks of a model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x):
        loss = (self.w(x) - x.sum(1, keepdim=True)).pow(2).mean()
        return loss, {}

    def save_pretrained(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(directory) / "w.pt")


class _Rows:
    """Index batches of `EpochBatches` over a fixed tensor: a stream with a position."""

    def __init__(self, data: torch.Tensor, batches: EpochBatches):
        self.data, self.batches = data, batches

    def __next__(self):
        return self.data[next(self.batches)]

    def state_dict(self) -> dict:
        return self.batches.state_dict()


@dataclass
class _ToyConfig(RunConfig):
    """A recipe's config: the run fields and an optimizer."""

    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05, warmup_steps=0))


class _Crash(Exception):
    """A process killed between two steps."""


def _toy_run(run_dir: Path, events: list, crash_at: int = 0) -> None:
    """5 steps of `_Toy` (checkpoints every 2), resumed from `run_dir`; killed before step `crash_at` (0: never)."""
    from stamo_vla.training.checkpoint import optimization_state
    from stamo_vla.training.distributed import setup_accelerator
    from stamo_vla.training.logger import TrainLogger
    from stamo_vla.training.loop import Hooks, Training, resume_point, train_loop

    cfg = _ToyConfig(run_dir=str(run_dir), max_steps=5, batch_size=2, save_steps=2, keep_last=5)
    accelerator = setup_accelerator("no")
    torch.manual_seed(0)
    model = _Toy()
    checkpoint = resume_point(cfg, run_dir)
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint / "model" / "w.pt"))
    optimizer, scheduler, state = optimization_state(
        model.parameters(), cfg.optim, cfg.max_steps, checkpoint, accelerator
    )
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    stream = _Rows(data, EpochBatches(8, 2, seed=0, state=state.data_state))

    def inspect(micro, accelerator):
        if state.step + 1 == crash_at:
            raise _Crash
        events.append(("inspect", len(micro)))

    hooks = Hooks(
        inspect=inspect,
        after_step=lambda step, metrics: events.append(("step", step, metrics["loss"])),
        before_save=lambda: events.append(("save",)),
    )
    with TrainLogger(run_dir, cfg.max_steps, state.step, enabled=False) as log:
        training = Training(model, optimizer, scheduler, state)
        train_loop(cfg, run_dir, training, stream, accelerator, log, hooks)


def test_the_loop_calls_the_hooks_in_order_and_resumes_exactly(tmp_path):
    straight, first, resumed = [], [], []
    _toy_run(tmp_path / "straight", straight)
    losses = [e[2] for e in straight if e[0] == "step"]
    assert [e[0] for e in straight[:6]] == ["inspect", "step", "inspect", "step", "save", "inspect"]
    assert [e[1] for e in straight if e[0] == "step"] == [1, 2, 3, 4, 5]
    assert straight[-1] == ("save",)  # the last step always saves
    with pytest.raises(_Crash):
        _toy_run(tmp_path / "run", first, crash_at=4)  # after the checkpoint of step 2, step 3 is lost
    state = json.loads((find_latest_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data_state"] == {"epoch": 0, "batch": 2, "batch_size": 2}
    _toy_run(tmp_path / "run", resumed)
    assert [e[1] for e in resumed if e[0] == "step"] == [3, 4, 5]
    assert [e[2] for e in resumed if e[0] == "step"] == losses[2:]  # bitwise: the run continued exactly


def test_a_vae_scale_an_older_pretraining_config_recorded_is_no_change_when_left_to_the_fit(tmp_path):
    from stamo_vla.configs import save_config
    from stamo_vla.training.resume_config import ResumeConfigError, reconcile_run
    from stamo_vla.training.stamo_pretrain import DERIVED, RESUME_FIXED

    old = _pretrain_cfg(tmp_path, 2, 2)
    old.model.decoder.vae.scaling_factor, old.model.decoder.vae.shift_factor = (
        0.5,
        0.1,
    )  # the fit, as recorded
    run_dir = Path(old.run_dir)
    run_dir.mkdir()
    save_config(old, run_dir / "config.yaml")
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2}))
    cfg = _pretrain_cfg(tmp_path, 2, 3)  # the scale unset: fitted
    with pytest.warns(UserWarning, match="max_steps: 2 -> 3"):
        changes = reconcile_run(cfg, run_dir, checkpoint, RESUME_FIXED, derived=DERIVED)
    assert changes == {"max_steps": {"old": 2, "new": 3}}
    cfg.model.decoder.vae.scaling_factor = 0.25  # chosen: another model than the checkpoint's
    with pytest.raises(
        ResumeConfigError, match=r"model\.decoder\.vae\.scaling_factor: recorded 0\.5 .* requested 0\.25"
    ):
        reconcile_run(cfg, run_dir, checkpoint, RESUME_FIXED, derived=DERIVED)
