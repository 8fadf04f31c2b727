"""Fine-tuning reads LeRobot data (`--data.format lerobot`) with both action heads: tokens and the L1 chunk."""

from __future__ import annotations

import numpy as np
import pytest

from stamo_vla.configs import parse_config
from stamo_vla.training.finetune import finetune, load_metrics
from stamo_vla.training.finetune_config import FinetuneConfig

NAME = "toy_push_lerobot"  # written by the toy_lerobot_root fixture (tests/training/conftest.py)


def lerobot_cfg(tmp_path, root, preset: str, *extra: str) -> FinetuneConfig:
    args = ["--config", preset, "--data.format", "lerobot", "--data.data_root_dir", str(root / NAME),
            "--data.dataset_names", f"[{NAME}]", "--data.shuffle_buffer_size", "16", "--run_dir",
            str(tmp_path / "run"), "--batch_size", "2", "--log_steps", "1", "--max_steps", "2",
            "--save_steps", "2", *extra]  # fmt: skip
    return parse_config(FinetuneConfig, args, prefix="finetune_")


@pytest.mark.slow
def test_token_head_trains_two_steps_on_lerobot_data(tmp_path, toy_lerobot_root):
    result = finetune(lerobot_cfg(tmp_path, toy_lerobot_root, "tiny", "--adapter.target", "none"))
    losses = [m["train/loss"] for m in load_metrics(result.run_dir) if "train/loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))  # logged each step
    assert (result.adapter_dir / "dataset_statistics.json").is_file()


@pytest.mark.slow
def test_l1_chunk_head_trains_two_steps_on_lerobot_data(tmp_path, toy_lerobot_root, tiny_stamo_dir):
    cfg = lerobot_cfg(tmp_path, toy_lerobot_root, "oft_tiny", "--stamo_path", str(tiny_stamo_dir))
    assert cfg.adapter.action_head.name == "l1" and cfg.data.format == "lerobot"
    result = finetune(cfg)
    l1 = [m["train/action_l1"] for m in load_metrics(result.run_dir) if "train/action_l1" in m]
    assert len(l1) == 2 and all(0 <= v < float("inf") for v in l1)


@pytest.mark.slow
def test_target_cache_pseudo_labels_and_pretraining_read_lerobot_data(
    tmp_path, toy_lerobot_root, tiny_stamo_dir
):
    from stamo_vla.data.pseudo_labels import label_latent_actions, load_latent_actions, rlds_episodes
    from stamo_vla.data.stamo_frames import LeRobotSource
    from stamo_vla.data.target_cache import build_target_cache
    from stamo_vla.stamo import StaMoEncoder

    encoder = StaMoEncoder.from_pretrained(tiny_stamo_dir)
    cache = build_target_cache(toy_lerobot_root, NAME, encoder, out_dir=tmp_path / "cache" / NAME)
    shards = sorted(p.name for p in (cache / "episodes").iterdir())
    assert len(shards) == 4  # one per episode: episode_index keys never collide
    cfg = lerobot_cfg(tmp_path, toy_lerobot_root, "tiny", "--adapter.target", "state", "--data.use_target_cache",
                      "true", "--data.target_cache_root", str(tmp_path / "cache"))  # fmt: skip
    result = finetune(cfg)
    assert len([m for m in load_metrics(result.run_dir) if "train/future_mse" in m]) == 2

    labels = load_latent_actions(
        label_latent_actions(rlds_episodes(toy_lerobot_root, NAME), encoder, tmp_path / "labels", horizon=1)
    )
    assert len(labels) == 4 and all(len(v) == 12 for v in labels.values())  # push episodes have 12 steps

    images, groups, names = LeRobotSource(
        data_root_dir=str(toy_lerobot_root), dataset_names=[NAME], frame_stride=6
    ).load_grouped(32)
    assert tuple(images.shape) == (8, 3, 32, 32) and groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # frames are named by their episode identity: the file path (episode_<index>) plus a content digest
    assert [n.split("#")[0] for n in names] == [f"{NAME}/episode_{i:06d}" for i in range(4)]
