"""Resume cases of the bad-input catalogue: interrupted collections, changed optimizer settings, another StaMo
encoder, a resume killed while it records its config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch


@pytest.mark.sim
@pytest.mark.slow
def test_an_interrupted_128_px_collection_resumes_through_the_demo_command(tmp_path, make_episode):
    from stamo_vla.data.rlds_writer import RLDSShardWriter
    from stamo_vla.demo import Demo, DemoConfig
    from stamo_vla.libero.collect import MANIFEST_NAME

    cfg = DemoConfig(output_dir=str(tmp_path / "demo"), task_ids=[0], episodes_per_task=1, num_workers=1)
    demo = Demo(cfg)
    # what a 128 px collection of an earlier version left when it was killed before building the dataset: its
    # episode staged, the manifest without the render size
    episode = {**make_episode(0), "file_path": "libero_spatial/task0/fresh_000"}
    RLDSShardWriter(demo.data, demo.dataset).add_episode(episode)
    record = {"file_path": episode["file_path"], "success": True, "steps": 9, "kept_steps": 8}
    record.update({"retries": 0, "crashed": False, "placement_seed": 1_000_000, "init_distance": 0.1})
    old = {
        "suite": "libero_spatial",
        "name": demo.dataset,
        "init_states": "fresh",
        "episodes": {"0:0": record},
    }
    manifest_path = demo.data / demo.dataset / MANIFEST_NAME
    manifest_path.write_text(json.dumps(old))

    demo.collect()  # resumes: the episode is kept, nothing re-runs, the dataset is built
    resumed = json.loads(manifest_path.read_text())
    assert resumed == {**old, "render_resolution": 128}
    assert (demo.data / demo.dataset / "1.0.0" / "dataset_info.json").is_file()
    log = (demo.out / "logs" / "collect.log").read_text()
    assert "predates the recording of the render size" in log and "--render_resolution 128" in log

    demo.collect()  # the manifest it wrote resumes too, without a warning
    assert json.loads(manifest_path.read_text()) == resumed
    assert (demo.out / "logs" / "collect.log").read_text().count("predates") == 1


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 3e-3},
        {"weight_decay": 0.1},  # from 0: the group's stored decay of 0 once hid which group decays
        {"betas": (0.5, 0.9)},
        {"eps": 1e-6},
        {"warmup_steps": 10},
        {"decay": "step", "decay_step_size": 1, "decay_gamma": 0.5},
    ],
    ids=lambda c: ",".join(c),
)
def test_each_optimizer_change_on_resume_takes_effect(tmp_path, change, toy_model):
    from stamo_vla.training.checkpoint import TrainerState, optimization_state, save_checkpoint
    from stamo_vla.training.optim import OptimizerConfig, lr_factor
    from stamo_vla.training.step import train_step

    model = toy_model()
    before = OptimizerConfig(lr=1e-3, weight_decay=0.0)
    optimizer, scheduler, _ = optimization_state(model.parameters(), before, 20, None, None)
    for _ in range(2):
        train_step(model, [{"x": torch.ones(2, 2)}], optimizer, scheduler)
    checkpoint = save_checkpoint(tmp_path, TrainerState(step=2), model, optimizer, scheduler)

    after = dataclasses.replace(before, **change)
    optimizer, scheduler, state = optimization_state(model.parameters(), after, 20, checkpoint, None)
    assert state.step == 2
    decayed, plain = optimizer.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (after.weight_decay, 0.0)
    for group in optimizer.param_groups:
        assert (group["betas"], group["eps"]) == (tuple(after.betas), after.eps)
        assert group["lr"] == pytest.approx(after.lr * lr_factor(2, after, 20))
    train_step(
        model, [{"x": torch.ones(2, 2)}], optimizer, scheduler
    )  # and the schedule goes on from the new config
    assert optimizer.param_groups[0]["lr"] == pytest.approx(after.lr * lr_factor(3, after, 20))


def test_resuming_with_another_stamo_encoder_is_refused(tmp_path, finetune_cfg):
    from stamo_vla.stamo import StaMoEncoder, tiny_config
    from stamo_vla.training.finetune import finetune
    from stamo_vla.training.resume_config import ResumeConfigError

    for seed in (0, 1):
        torch.manual_seed(seed)
        StaMoEncoder(tiny_config()).save_pretrained(tmp_path / f"stamo{seed}")
    head = ("--adapter.target", "motion", "--adapter.head_width", "16")
    first = finetune(finetune_cfg("--max_steps", "1", *head, "--stamo_path", str(tmp_path / "stamo0")))
    recorded = json.loads((first.adapter_dir / "provenance.json").read_text())["stamo_fingerprint"]
    with pytest.raises(
        ResumeConfigError, match=rf"StaMo encoder: the head learned the states of encoder {recorded[:12]}"
    ):
        finetune(finetune_cfg("--max_steps", "2", *head, "--stamo_path", str(tmp_path / "stamo1")))
    assert json.loads((first.adapter_dir / "provenance.json").read_text())["stamo_fingerprint"] == recorded


def test_a_resume_killed_after_recording_its_change_never_overwrites_the_history(tmp_path, finetune_cfg):
    from stamo_vla.configs import save_config
    from stamo_vla.training.resume_config import CHANGES_FILE, HISTORY_DIR, reconcile

    original = finetune_cfg("--optim.lr", "0.005")
    run_dir = original.run_path()
    run_dir.mkdir(parents=True)
    save_config(original, run_dir / "config.yaml")
    original_text = (run_dir / "config.yaml").read_text()
    checkpoint = (
        tmp_path / "checkpoint"
    )  # a step-2 checkpoint without adapter files: nothing fixed to compare
    checkpoint.mkdir()
    for lr in ("0.001", "0.002"):  # the first resume is killed after recording; the second resumes again
        changed = finetune_cfg("--optim.lr", lr)
        with pytest.warns(UserWarning, match="resuming at step 2"):
            reconcile(changed.to_dict(), run_dir, checkpoint, 2)
        save_config(changed, run_dir / "config.yaml")
    history = sorted(p.name for p in (run_dir / HISTORY_DIR).iterdir())
    assert history == ["config_until_step_00000002.1.yaml", "config_until_step_00000002.yaml"]
    assert (run_dir / HISTORY_DIR / "config_until_step_00000002.yaml").read_text() == original_text
    records = [
        json.loads(line)["changes"]["optim.lr"] for line in (run_dir / CHANGES_FILE).read_text().splitlines()
    ]
    assert records == [{"old": 0.005, "new": 0.001}, {"old": 0.001, "new": 0.002}]


def test_resuming_base_training_with_another_model_size_is_refused(tmp_path, toy_rlds_root):
    from stamo_vla.configs import parse_config
    from stamo_vla.training.base_training import BaseTrainConfig, train_base
    from stamo_vla.training.checkpoint import list_checkpoints
    from stamo_vla.training.resume_config import ResumeConfigError

    def cfg(model: str, steps: str) -> BaseTrainConfig:
        args = ["--model", model, "--data.image_size", "224", "--data.data_root_dir", str(toy_rlds_root)]
        args += ["--data.dataset_names", "[toy_push_no_noops]", "--data.shuffle_buffer_size", "8"]
        args += ["--run_dir", str(tmp_path / "base"), "--batch_size", "2", "--max_steps", steps]
        return parse_config(BaseTrainConfig, [*args, "--save_steps", "1"])

    train_base(cfg("tiny", "1"))
    saved = (tmp_path / "base" / "config.yaml").read_text()
    checkpoints = list_checkpoints(tmp_path / "base")
    # tiny and mid both take 224 px: only the model differs, and the checkpoint holds the tiny one
    with pytest.raises(
        ResumeConfigError, match=r"model: recorded 'tiny' \(in .*config.yaml\), requested 'mid'.*--model tiny"
    ):
        train_base(cfg("mid", "2"))
    assert (tmp_path / "base" / "config.yaml").read_text() == saved  # nothing recorded, nothing trained
    assert list_checkpoints(tmp_path / "base") == checkpoints
