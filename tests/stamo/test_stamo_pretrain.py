import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stamo_vla.configs import load_config, parse_config
from stamo_vla.data.stamo_frames import ImageFolderSource, RLDSSource, SyntheticSource
from stamo_vla.stamo.configuration_stamo import tiny_config
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder
from stamo_vla.training.checkpoint import list_checkpoints
from stamo_vla.training.optim import OptimizerConfig
from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig, pretrain

REPO = Path(__file__).resolve().parents[2]


def _cfg(run_dir: Path, **changes) -> PretrainStaMoConfig:
    base = dict(
        model=tiny_config(),
        source=SyntheticSource(num_images=12),
        num_heldout=2,
        run_dir=str(run_dir),
        max_steps=4,
        batch_size=4,
        optim=OptimizerConfig(lr=1e-3, warmup_steps=1, decay="cosine"),
        vae_fit_steps=2,
        log_steps=1,
        save_steps=2,
        eval_sample_steps=1,
        interpolation_frames=3,
    )
    return PretrainStaMoConfig(**{**base, **changes})


@pytest.mark.slow
def test_pretrain_writes_outputs_and_resume_continues_the_same_loss_curve(tmp_path):
    cfg = _cfg(tmp_path / "run")
    first = pretrain(cfg)
    assert sorted(first["losses"]) == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step_00000002", "step_00000004"]
    # outputs: config that ran, metrics, tensorboard, sample sheet (3 rows: inputs, recon, interpolation)
    assert load_config(PretrainStaMoConfig, tmp_path / "run" / "config.yaml") == cfg
    assert (
        cfg.model.decoder.vae.scaling_factor is None
    )  # what the user chose: fit it (the model records the fit)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if "train/loss" in r} == {1, 2, 3, 4}
    keys = set().union(*(r.keys() for r in records if r["step"] == 4))
    assert {
        "eval/psnr",
        "eval/ssim",
        "eval/psnr_shuffled",
        "eval_train/psnr",
        "eval_train/psnr_shuffled",
    } <= keys
    assert set(first["eval"]) >= {"psnr", "ssim", "psnr_vae", "latent_mse", "train_psnr"}
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    sheet = Image.open(tmp_path / "run" / "samples" / "step_00000004.png")
    assert (
        sheet.height == 4 * 64 + 5 * 2
    )  # originals | own-state decode | shuffled-state decode | interpolation
    # the fitted VAE and its latent scale travel with the checkpoint
    model = StaMoAutoencoder.from_pretrained(Path(first["checkpoint"]) / "model")
    assert model.config.decoder.vae.scaling_factor is not None

    # interrupt after step 2: drop the newest checkpoint and rerun the same command
    shutil.rmtree(list_checkpoints(cfg.run_dir)[-1])
    resumed = pretrain(cfg)
    assert sorted(resumed["losses"]) == [3, 4]
    assert resumed["losses"] == {3: first["losses"][3], 4: first["losses"][4]}  # bit-exact on CPU


def test_image_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "notes.txt"]):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
            continue
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    images = ImageFolderSource(path=str(tmp_path)).load(32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert ImageFolderSource(path=str(tmp_path), max_images=2).load(32).shape[0] == 2
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFolderSource(path=str(tmp_path / "missing")).load(32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no image files"):
        ImageFolderSource(path=str(tmp_path / "empty")).load(32)


@pytest.mark.slow
def test_rlds_source_reads_frames_of_the_written_dataset(tmp_path):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    def episode(i: int, length: int = 6) -> dict:
        img = np.full((length, 256, 256, 3), 30 * i, dtype=np.uint8)
        img[:, :, :128] = 200  # left half bright: survives JPEG and resizing
        return {
            "image": img,
            "wrist_image": np.zeros_like(img),
            "state": np.zeros((length, 8), np.float32),
            "joint_state": np.zeros((length, 7), np.float32),
            "action": np.zeros((length, 7), np.float32),
            "language_instruction": "pick up the bowl",
            "file_path": f"/demos/ep_{i}.hdf5",
        }

    write_rlds_dataset((episode(i) for i in range(2)), tmp_path, "toy_frames")
    src = RLDSSource(data_root_dir=str(tmp_path), dataset_names=["toy_frames"], frame_stride=2)
    images = src.load(32)
    assert images.shape == (6, 3, 32, 32)  # 2 episodes x ceil(6 / 2) frames
    assert images[:, :, :, :12].float().mean() > 150 and images[:, :, :, -12:].float().mean() < 80
    assert (
        RLDSSource(data_root_dir=str(tmp_path), dataset_names=["toy_frames"], max_images=4).load(32).shape[0]
        == 4
    )


@pytest.mark.slow
def test_recipe_runs_under_torchrun_with_two_cpu_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "stamo_vla.cli", "pretrain", "--config", "tiny", "--run_dir", str(tmp_path),
        "--max_steps", "2", "--vae_fit_steps", "0", "--batch_size", "2", "--num_heldout", "2",
        "--eval_sample_steps", "1", "--source.num_images", "12",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((list_checkpoints(tmp_path)[-1] / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 2
    # 10 training images, global batch 2 ranks x 2: two full batches per epoch, one per step
    assert state["data_state"] == {"epoch": 0, "batch": 2, "batch_size": 2}
    preset = parse_config(PretrainStaMoConfig, ["--config", "tiny"], prefix="pretrain_stamo_")
    assert StaMoAutoencoder.from_pretrained(list_checkpoints(tmp_path)[-1] / "model").config == preset.model


def test_resuming_a_different_model_is_refused(tmp_path):
    from stamo_vla.training.stamo_pretrain import check_resume_config

    saved = tiny_config()
    saved.decoder.vae.scaling_factor, saved.decoder.vae.shift_factor = 2.0, 0.1
    requested = tiny_config()
    check_resume_config(requested, saved, tmp_path)  # the VAE fit's scale is not a difference
    assert requested.decoder.vae.scaling_factor is None  # derived: the saved model records it, not the config
    requested.state_dim = 32
    with pytest.raises(
        ValueError, match=r"different model \(fields differ: \['state_dim'\]\).*--resume false"
    ):
        check_resume_config(requested, saved, tmp_path)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resume_finishes(tmp_path, monkeypatch):
    import signal

    from stamo_vla.training import loop as step_module  # the loop every recipe runs
    from stamo_vla.training.checkpoint import find_latest_checkpoint
    from stamo_vla.training.preemption import TrainingInterrupted

    real_step, calls = step_module.train_step, []

    def step_then_sigterm(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # arrives during step 3 of 4 (checkpoints every 2)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(step_module, "train_step", step_then_sigterm)
    cfg = _cfg(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as stopped:
        pretrain(cfg)
    assert stopped.value.step == 3 and find_latest_checkpoint(cfg.run_dir).name.endswith("3")
    monkeypatch.setattr(step_module, "train_step", real_step)
    assert sorted(pretrain(cfg)["losses"]) == [4]  # resumed after step 3: only step 4 runs
