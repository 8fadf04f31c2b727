"""Target cache: equals direct encoder calls, resumes, refuses stale caches, feeds STATE / FUTURE_STATE, stops at
non-finite shards, and gives the per-dimension target statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import ACTION_FREE, episode_length

from stamo_vla import cli, keys
from stamo_vla.adapter.cache_targets import main_cache_targets
from stamo_vla.data import rlds
from stamo_vla.data.config import DataConfig
from stamo_vla.data.dataset import RLDSFrameDataset
from stamo_vla.data.episodes import episode_id
from stamo_vla.data.statistics import compute_statistics
from stamo_vla.data.target_cache import (
    StaleTargetCacheError,
    TargetCache,
    build_target_cache,
    read_manifest,
    target_statistics,
)

pytestmark = pytest.mark.slow  # builds a tiny StaMo encoder (imports transformers) once per module


def _encoder(seed: int):
    from stamo_vla.stamo import StaMoEncoder, tiny_config

    torch.manual_seed(seed)
    return StaMoEncoder(tiny_config()).eval()


@pytest.fixture(scope="module")
def cache(data_root, tmp_path_factory):
    encoder = _encoder(0)
    out = build_target_cache(
        data_root, ACTION_FREE, encoder, tmp_path_factory.mktemp("cache") / "c", batch_size=5
    )
    return out, encoder


def test_targets_equal_a_direct_encoder_call(data_root, cache):
    out, encoder = cache
    opened = TargetCache.open(out, data_root, ACTION_FREE)
    cfg = encoder.config
    for ep in rlds.iter_episodes(data_root, ACTION_FREE):
        states = opened.load_episode(ep)
        assert (
            states.shape == (len(ep["image"]), cfg.num_state_tokens, cfg.state_dim)
            and states.dtype == np.float32
        )
        with torch.no_grad():
            direct = encoder.encode(torch.tensor(ep["image"]).permute(0, 3, 1, 2).float() / 255.0).numpy()
        np.testing.assert_allclose(states, direct, atol=1e-5)


def test_resume_only_encodes_missing_episodes(data_root, cache):
    out, encoder = cache
    shards = sorted((out / "episodes").iterdir())
    assert len(shards) == 3
    before = {p: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    build_target_cache(data_root, ACTION_FREE, encoder, out, batch_size=5)
    assert shards[1].is_file()
    assert (
        shards[0].stat().st_mtime_ns == before[shards[0]]
        and shards[2].stat().st_mtime_ns == before[shards[2]]
    )


def test_changed_encoder_is_refused_with_a_clear_error(data_root, cache, tmp_path):
    from stamo_vla.stamo import fingerprint

    out, _ = cache
    other = _encoder(1)
    with pytest.raises(StaleTargetCacheError, match="encoder_fingerprint: cache has") as err:
        build_target_cache(data_root, ACTION_FREE, other, out)
    assert "--overwrite" in str(err.value) and "stamo-vla cache-targets" in str(err.value)
    with pytest.raises(StaleTargetCacheError, match="encoder_fingerprint"):
        TargetCache.open(out, data_root, ACTION_FREE, encoder_fingerprint=fingerprint(other))
    with pytest.raises(FileNotFoundError, match="cache-targets"):
        TargetCache.open(tmp_path / "none", data_root, ACTION_FREE)


def test_changed_dataset_is_refused(data_root, cache, tmp_path):
    import shutil

    out, _ = cache
    root = tmp_path / "root"
    shutil.copytree(
        data_root / ACTION_FREE, root / ACTION_FREE, ignore=shutil.ignore_patterns("stamo_targets")
    )
    rec = next((root / ACTION_FREE / "1.0.0").glob("*.tfrecord-*"))
    rec.write_bytes(rec.read_bytes() + b"\0")  # a rebuilt dataset has other files
    with pytest.raises(StaleTargetCacheError, match="dataset_fingerprint"):
        TargetCache.open(out, root, ACTION_FREE)


def test_dataset_attaches_cached_states(data_root, cache):
    out, _ = cache
    stats = compute_statistics(data_root, ACTION_FREE)
    cfg = DataConfig(
        data_root_dir=str(data_root),
        dataset_names=[ACTION_FREE],
        split="all",
        repeat=False,
        shuffle_buffer_size=0,
        horizon=2,
        use_target_cache=True,
        target_cache_root=str(out.parent),
    )
    # the cache root layout is <root>/<dataset_name>/: expose the fixture's cache under that name
    link = out.parent / ACTION_FREE
    if not link.exists():
        link.symlink_to(out, target_is_directory=True)
    assert cfg.target_cache_dir(ACTION_FREE) == str(link)
    opened = TargetCache.open(link, data_root, ACTION_FREE)
    samples = list(RLDSFrameDataset(cfg, ACTION_FREE, stats, rank=0, world_size=1))
    assert len(samples) == sum(episode_length(100 + i) for i in range(3))
    by_episode = {
        episode_id(ep): opened.load_episode(ep)
        for ep in rlds.iter_episodes(data_root, ACTION_FREE, load_images=False)
    }
    for s in samples:
        ep = s[keys.EPISODE_ID]
        np.testing.assert_array_equal(s[keys.STATE], by_episode[ep][s[keys.STEP]])
        np.testing.assert_array_equal(s[keys.FUTURE_STATE], by_episode[ep][s[keys.FUTURE_STEP]])


def test_cli_builds_the_same_cache(data_root, cache, tmp_path):
    out, encoder = cache
    ckpt = tmp_path / "enc"
    encoder.save_pretrained(ckpt)
    dest = tmp_path / "cli_cache"
    argv = [
        "--data_root_dir",
        str(data_root),
        "--dataset_name",
        ACTION_FREE,
        "--stamo_path",
        str(ckpt),
        "--output_dir",
        str(dest),
    ]
    assert main_cache_targets([*argv, "--batch_size", "7", "--device", "cpu"]) == 0
    a, b = TargetCache.open(out, data_root, ACTION_FREE), TargetCache.open(dest, data_root, ACTION_FREE)
    assert a.manifest == b.manifest
    for ep in rlds.iter_episodes(data_root, ACTION_FREE, load_images=False):
        np.testing.assert_allclose(a.load_episode(ep), b.load_episode(ep), atol=1e-5)


def test_cli_refuses_a_stale_cache_with_a_message(data_root, cache, tmp_path, capsys):
    out, _ = cache
    ckpt = tmp_path / "other"
    _encoder(2).save_pretrained(ckpt)
    argv = [
        "--data_root_dir",
        str(data_root),
        "--dataset_name",
        ACTION_FREE,
        "--stamo_path",
        str(ckpt),
        "--output_dir",
        str(out),
    ]
    assert cli.main(["cache-targets", *argv, "--device", "cpu"]) == 2
    assert "encoder_fingerprint" in capsys.readouterr().err


def test_manifest_records_the_target_kind_and_old_manifests_read_as_stamo(data_root, cache, tmp_path):
    import json
    import shutil

    out, encoder = cache
    assert read_manifest(out)["target_kind"] == "stamo"
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["target_kind"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert (
        TargetCache.open(old, data_root, ACTION_FREE, target_kind="stamo").manifest["target_kind"] == "stamo"
    )
    with pytest.raises(
        StaleTargetCacheError, match="target_kind: cache has 'stamo', expected 'backbone_features'"
    ):
        TargetCache.open(old, data_root, ACTION_FREE, target_kind="backbone_features")
    build_target_cache(data_root, ACTION_FREE, encoder, old)  # the same encoder reuses the old cache


def test_a_nan_shard_stops_reading_with_its_name_and_a_rerun_repairs_it(data_root, cache, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    out, encoder = cache
    copy = tmp_path / "nan"
    shutil.copytree(out, copy)
    ep = next(rlds.iter_episodes(data_root, ACTION_FREE, load_images=False))
    opened = TargetCache.open(copy, data_root, ACTION_FREE)
    shard = opened.shard_path(episode_id(ep))
    states = load_file(str(shard))["states"]
    good = states.copy()
    states[1, 0, 3] = np.nan
    save_file({"states": states}, str(shard))
    with pytest.raises(StaleTargetCacheError, match="non-finite") as err:
        opened.load_episode(ep)
    assert str(shard) in str(err.value) and "first at step 1" in str(err.value)
    assert "stamo-vla cache-targets" in str(err.value)
    with pytest.raises(StaleTargetCacheError, match=str(shard)):
        target_statistics([copy], 1, difference=False)
    with pytest.warns(UserWarning, match="non-finite"):
        build_target_cache(data_root, ACTION_FREE, encoder, copy, batch_size=5)
    np.testing.assert_allclose(opened.load_episode(ep), good, atol=1e-6)


@pytest.mark.parametrize("difference", [False, True])
def test_target_statistics_are_the_per_dimension_moments_of_the_targets(data_root, cache, difference):
    out, _ = cache
    opened = TargetCache.open(out, data_root, ACTION_FREE)
    horizon, targets = 2, []
    for ep in rlds.iter_episodes(data_root, ACTION_FREE, load_images=False):
        states = opened.load_episode(ep).astype(np.float64)
        future = states[np.minimum(np.arange(len(states)) + horizon, len(states) - 1)]
        targets.append(future - states if difference else future)
    targets = np.concatenate(targets)
    stats = target_statistics([out], horizon, difference)
    assert stats["count"] == len(targets) and stats["mean"].shape == targets.shape[1:]
    np.testing.assert_allclose(stats["mean"], targets.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["std"], targets.std(0), atol=1e-4)
