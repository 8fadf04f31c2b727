"""Fine-tuning that is interrupted, resumed with another config, or has nothing to learn from."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from stamo_vla.training import loop as loop_module
from stamo_vla.training.finetune import finetune, load_metrics
from stamo_vla.training.preemption import SIGTERM_EXIT_CODE, TrainingInterrupted
from stamo_vla.training.resume_config import ResumeConfigError


def _losses(run_dir):
    return {m["step"]: m["train/loss"] for m in load_metrics(run_dir)}


def _sigterm_at(monkeypatch, at_step: int):
    """Send this process SIGTERM during optimizer step `at_step` (as a scheduler would, at any moment)."""
    real, calls = loop_module.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", step)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_from_it(tmp_path, finetune_cfg, monkeypatch):
    args = ("--max_steps", "5", "--save_steps", "100")
    straight = finetune(finetune_cfg(*args, "--run_dir", str(tmp_path / "runs" / "straight")))
    _sigterm_at(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted) as stopped:
        finetune(finetune_cfg(*args))
    assert stopped.value.code == SIGTERM_EXIT_CODE and stopped.value.step == 2
    assert stopped.value.checkpoint.name == "step_00000002"  # no periodic checkpoint was due
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    resumed = finetune(finetune_cfg(*args, "--resume", "true"))
    assert resumed.step == 5
    assert _losses(resumed.run_dir) == _losses(straight.run_dir)  # steps 1-2 before, 3-5 after the stop


@pytest.mark.slow
def test_resume_refuses_a_model_change_and_records_allowed_changes(tmp_path, finetune_cfg):
    first = finetune(finetune_cfg("--max_steps", "2", "--save_steps", "2"))
    old_config = (first.run_dir / "config.yaml").read_text()
    with pytest.raises(ResumeConfigError, match=r"adapter\.lora_rank: checkpoint 8, now 4"):
        finetune(finetune_cfg("--max_steps", "3", "--resume", "true", "--adapter.lora_rank", "4"))
    assert (first.run_dir / "config.yaml").read_text() == old_config  # nothing was overwritten
    with pytest.warns(UserWarning, match=r"optim\.lr: 0\.005 -> 0\.001"):
        resumed = finetune(
            finetune_cfg("--max_steps", "3", "--save_steps", "2", "--resume", "true", "--optim.lr", "0.001")
        )
    changes = [
        json.loads(line) for line in (resumed.run_dir / "config_changes.jsonl").read_text().splitlines()
    ]
    assert changes == [
        {
            "step": 2,
            "changes": {"max_steps": {"old": 2, "new": 3}, "optim.lr": {"old": 0.005, "new": 0.001}},
        }
    ]
    kept = resumed.run_dir / "config_history" / "config_until_step_00000002.yaml"
    assert kept.read_text() == old_config
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.001
    lrs = {m["step"]: m["train/lr"] for m in load_metrics(resumed.run_dir)}
    assert lrs[2] == pytest.approx(0.005) and lrs[3] == pytest.approx(0.001)  # took effect at step 3


def test_action_free_data_without_a_stamo_target_fails_fast(tmp_path, finetune_cfg):
    cfg = finetune_cfg("--max_steps", "50", "--save_steps", "50", dataset="toy_video")
    with pytest.raises(ValueError, match="nothing to learn from.*action-free.*adapter.target=none"):
        finetune(cfg)
    from stamo_vla.training.checkpoint import list_checkpoints

    assert list_checkpoints(tmp_path / "runs" / "toy") == []  # stopped before the first checkpoint


def test_supervision_check_counts_clamped_future_frames_as_degenerate():
    from stamo_vla import keys as K
    from stamo_vla.training.supervision import FinetuneCollator

    clamped = [{K.HAS_ACTION: False, K.STEP: 5, K.FUTURE_STEP: 5}] * 3
    assert FinetuneCollator.supervision(clamped, has_head=True) == {
        "samples": 3,
        "actions": 0,
        "targets": 0,
        "degenerate": 3,
        "clamped": 0,  # counted against a horizon (none given here)
        "longest": 0,
    }
    real = [{K.HAS_ACTION: False, K.STEP: 1, K.FUTURE_STEP: 3}]
    assert FinetuneCollator.supervision(real, has_head=True)["targets"] == 1


def test_horizon_longer_than_every_episode_fails_fast(finetune_cfg):
    from stamo_vla.training.supervision import SupervisionCheck

    cfg = finetune_cfg("--max_steps", "2")
    cfg.adapter.target, cfg.adapter.horizon = "motion", 50
    check = SupervisionCheck(cfg.max_steps, cfg.adapter.has_head, cfg.adapter.horizon)
    clamped = {"samples": 2, "actions": 0, "targets": 0, "degenerate": 2}
    check.update([clamped], None)
    with pytest.raises(ValueError, match=r"horizon=50 is longer than the episodes"):
        check.update([clamped], None)


def test_a_split_with_no_episodes_says_so(finetune_cfg):
    cfg = finetune_cfg("--max_steps", "2", "--data.split", "val", "--data.train_percent", "100")
    with pytest.raises(ValueError, match="has no episodes"):
        finetune(cfg)


def test_mostly_degenerate_samples_warn(finetune_cfg, caplog):
    from stamo_vla.training.supervision import SupervisionCheck

    cfg = finetune_cfg("--max_steps", "1")
    cfg.adapter.target = "motion"
    check = SupervisionCheck(cfg.max_steps, cfg.adapter.has_head, cfg.adapter.horizon)
    with caplog.at_level("WARNING", logger="stamo_vla.training.supervision"):
        check.update([{"samples": 4, "actions": 1, "targets": 0, "degenerate": 3}], None)
    assert "3 of 4 samples in the first 1 steps are degenerate" in caplog.text


def test_a_horizon_longer_than_every_episode_is_refused_with_the_episode_lengths(finetune_cfg):
    from stamo_vla import keys as K
    from stamo_vla.training.supervision import FinetuneCollator, SupervisionCheck

    cfg = finetune_cfg("--max_steps", "2")
    cfg.adapter.target, cfg.adapter.horizon = "motion", 50
    # labeled samples of 8-step episodes: each future frame is the episode's last one, short of 50 steps ahead
    samples = [{K.HAS_ACTION: True, K.STEP: t, K.FUTURE_STEP: 7} for t in range(7)]
    counts = FinetuneCollator.supervision(samples, has_head=True, horizon=50)
    assert (counts["actions"], counts["clamped"], counts["longest"]) == (7, 7, 8)
    check = SupervisionCheck(cfg.max_steps, cfg.adapter.has_head, cfg.adapter.horizon)
    check.update([counts], None)
    with pytest.raises(
        ValueError, match=r"adapter.horizon=50 is longer than every episode read.*at most 8 steps"
    ):
        check.update([counts], None)
    fine = FinetuneCollator.supervision(samples, has_head=True, horizon=3)  # most samples see 3 steps ahead
    check = SupervisionCheck(cfg.max_steps, cfg.adapter.has_head, cfg.adapter.horizon)
    check.update([fine], None)
    check.update([fine], None)  # judged after two steps: no error
    assert check.done and fine["clamped"] == 2
