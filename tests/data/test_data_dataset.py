"""Sample stream: keys/shapes/dtypes, frame identity, horizon clamp, chunk anchors, DDP/worker sharding, mixture."""

from __future__ import annotations

import types

import numpy as np
import pytest
from data_helpers import (
    ACTION_FREE,
    LABELED,
    STEP_BASE,
    STEP_SCALE,
    episode_length,
    make_episode,
    written_order,
)

from stamo_vla import keys
from stamo_vla.data import dataset as dataset_mod
from stamo_vla.data import transforms
from stamo_vla.data.config import DataConfig
from stamo_vla.data.dataset import MixtureDataset, RLDSFrameDataset, make_dataloader
from stamo_vla.data.episodes import episode_id
from stamo_vla.data.normalization import normalize
from stamo_vla.data.statistics import compute_statistics


@pytest.fixture(scope="module")
def stats(data_root):
    return {n: compute_statistics(data_root, n) for n in (LABELED, ACTION_FREE)}


def _cfg(data_root, **kw) -> DataConfig:
    base = dict(data_root_dir=str(data_root), dataset_names=[LABELED], repeat=False, shuffle_buffer_size=0)
    return DataConfig(**{**base, **kw})


def _step_value(img: np.ndarray) -> int:
    return int(round((img[84:140, 28:84, 0].astype(float).mean() - STEP_BASE) / STEP_SCALE))


def _pass(cfg, stats, name=LABELED, rank=0, world=1, worker=None, monkeypatch=None):
    ds = RLDSFrameDataset(cfg, name, stats[name], rank=rank, world_size=world)
    if worker is not None:
        monkeypatch.setattr(
            dataset_mod, "get_worker_info", lambda: types.SimpleNamespace(id=worker[0], num_workers=worker[1])
        )
    return list(ds)


def test_sample_keys_shapes_dtypes_and_values(data_root, stats):
    cfg = _cfg(data_root, split="val", horizon=3, action_chunk=4, load_wrist=True, load_proprio=True)
    samples = _pass(cfg, stats)
    last = written_order()[-1]  # val = train[95%:] = the last of 20 episodes as written
    src, n = make_episode(last), episode_length(last)
    assert len(samples) == n - 3  # the last K-1 = 3 steps start no chunk (upstream OFT)
    assert sorted(s[keys.STEP] for s in samples) == list(range(n - 3))
    for s in samples:
        assert set(s) == {
            keys.IMAGE,
            keys.FUTURE_IMAGE,
            keys.WRIST_IMAGE,
            keys.INSTRUCTION,
            keys.ACTION,
            keys.PROPRIO,
            keys.HAS_ACTION,
            keys.DATASET_NAME,
            keys.EPISODE_ID,
            keys.STEP,
            keys.FUTURE_STEP,
        }
        for k in (keys.IMAGE, keys.FUTURE_IMAGE, keys.WRIST_IMAGE):
            assert s[k].shape == (224, 224, 3) and s[k].dtype == np.uint8
        assert s[keys.ACTION].shape == (4, 7) and s[keys.ACTION].dtype == np.float32
        assert s[keys.PROPRIO].shape == (8,) and s[keys.PROPRIO].dtype == np.float32
        assert s[keys.HAS_ACTION] is True and s[keys.DATASET_NAME] == LABELED
        assert s[keys.EPISODE_ID] == episode_id(src) and s[keys.INSTRUCTION] == src["language_instruction"]
        t = s[keys.STEP]
        assert s[keys.FUTURE_STEP] == min(t + 3, n - 1)  # clamped at the episode end
        # upright, and the frames are the ones the indices say
        assert s[keys.IMAGE][:10].mean() > 235 and s[keys.IMAGE][-10:].mean() < 40
        assert s[keys.WRIST_IMAGE][-10:].mean() > 235
        assert _step_value(s[keys.IMAGE]) == t and _step_value(s[keys.FUTURE_IMAGE]) == s[keys.FUTURE_STEP]
        expected = normalize(transforms.standardize_gripper(src["action"]), stats[LABELED]["action"])
        np.testing.assert_allclose(s[keys.ACTION], expected[t : t + 4], atol=1e-6)  # never padded
        assert set(np.unique(s[keys.ACTION][:, -1])) <= {0.0, 1.0}
        np.testing.assert_allclose(
            s[keys.PROPRIO], normalize(src["state"][t], stats[LABELED]["proprio"]), atol=1e-6
        )


def test_no_training_chunk_is_padded(data_root, stats):
    for chunk in (1, 8):
        samples = _pass(_cfg(data_root, action_chunk=chunk), stats)  # train[:95%] = 19 episodes
        assert len(samples) == sum(episode_length(i) - chunk + 1 for i in written_order()[:19])
        for s in samples:
            src = make_episode(int(s[keys.EPISODE_ID].split("#")[0].split("_")[-1].split(".")[0]))
            actions = normalize(transforms.standardize_gripper(src["action"]), stats[LABELED]["action"])
            t = s[keys.STEP]
            assert t + chunk <= len(actions)  # every entry is a real step of the episode, none repeated
            np.testing.assert_allclose(s[keys.ACTION], actions[t : t + chunk], atol=1e-6)


def test_primary_and_wrist_images_get_independent_augmentation_draws(data_root, stats):
    cfg = _cfg(data_root, train_percent=5, image_aug=True, load_wrist=True)
    ds = RLDSFrameDataset(cfg, LABELED, stats[LABELED])
    ep = next(iter(ds._episodes((0, 1), 0)))
    draws = []
    original = dataset_mod.augment_image
    try:
        dataset_mod.augment_image = lambda img, params: (draws.append(params), img)[1]
        ds.make_sample(ep, 0, np.random.default_rng(0))
    finally:
        dataset_mod.augment_image = original
    primary, future, wrist = draws  # IMAGE, FUTURE_IMAGE, WRIST_IMAGE in sample order
    assert primary == future and primary != wrist  # the future frame is the primary camera's


def test_ranks_and_workers_get_disjoint_samples_covering_the_split(data_root, stats, monkeypatch):
    cfg = _cfg(data_root, shuffle_buffer_size=8)
    expected = {
        (episode_id(make_episode(i)), t) for i in written_order()[:19] for t in range(episode_length(i))
    }
    seen: list[set] = []
    for rank in range(2):
        for worker in range(2):
            got = [
                (s[keys.EPISODE_ID], s[keys.STEP])
                for s in _pass(cfg, stats, rank=rank, world=2, worker=(worker, 2), monkeypatch=monkeypatch)
            ]
            assert len(got) == len(set(got))
            seen.append(set(got))
    assert all(seen)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not seen[i] & seen[j]
    assert set().union(*seen) == expected


def test_train_and_val_are_disjoint_by_episode(data_root, stats):
    train = {s[keys.EPISODE_ID] for s in _pass(_cfg(data_root, split="train"), stats)}
    val = {s[keys.EPISODE_ID] for s in _pass(_cfg(data_root, split="val"), stats)}
    assert len(train) == 19 and len(val) == 1 and not train & val


def test_shuffle_is_seeded_and_augmentation_deterministic(data_root, stats):
    # train[:5%] = one episode; augmentation applies to the train split only
    cfg = _cfg(data_root, train_percent=5, shuffle_buffer_size=5, image_aug=True)
    a, b = _pass(cfg, stats), _pass(cfg, stats)
    assert [s[keys.STEP] for s in a] == [s[keys.STEP] for s in b] != sorted(s[keys.STEP] for s in a)
    np.testing.assert_array_equal(a[0][keys.IMAGE], b[0][keys.IMAGE])
    plain = {s[keys.STEP]: s for s in _pass(_cfg(data_root, train_percent=5), stats)}
    assert not RLDSFrameDataset(
        DataConfig(**{**cfg.__dict__, "split": "val"}), LABELED, stats[LABELED], 0, 1
    ).augment
    assert any(np.abs(s[keys.IMAGE].astype(int) - plain[s[keys.STEP]][keys.IMAGE]).mean() > 2 for s in a)
    c = _pass(DataConfig(**{**cfg.__dict__, "seed": 8}), stats)
    assert [s[keys.STEP] for s in c] != [s[keys.STEP] for s in a]


def test_repeat_streams_forever_and_action_free_samples(data_root, stats):
    cfg = _cfg(data_root, dataset_names=[ACTION_FREE], split="all", repeat=True, shuffle_buffer_size=4)
    it = iter(RLDSFrameDataset(cfg, ACTION_FREE, stats[ACTION_FREE], rank=0, world_size=1))
    total = sum(episode_length(100 + i) for i in range(3))
    samples = [next(it) for _ in range(total + 5)]  # more than one epoch
    assert all(s[keys.HAS_ACTION] is False for s in samples)
    assert all((s[keys.ACTION] == 0).all() for s in samples)


def test_mixture_follows_weights_and_keeps_sources(data_root, stats):
    labeled = RLDSFrameDataset(
        _cfg(data_root, repeat=True, shuffle_buffer_size=4), LABELED, stats[LABELED], 0, 1
    )
    video_cfg = _cfg(data_root, dataset_names=[ACTION_FREE], split="all", repeat=True, shuffle_buffer_size=4)
    video = RLDSFrameDataset(video_cfg, ACTION_FREE, stats[ACTION_FREE], 0, 1)
    it = iter(MixtureDataset([labeled, video], [3.0, 1.0], seed=0))
    names = [next(it)[keys.DATASET_NAME] for _ in range(200)]
    frac = names.count(LABELED) / len(names)
    assert 0.65 < frac < 0.85
    with pytest.raises(ValueError, match="one weight per dataset"):
        MixtureDataset([labeled], [1.0, 2.0])


def test_build_from_config_and_dataloader_collation(data_root, stats):
    cfg = _cfg(
        data_root, dataset_names=[LABELED, ACTION_FREE], weights=[1.0, 1.0], split="all", action_chunk=2
    )
    ds = cfg.build(rank=0, world_size=1)
    assert isinstance(ds, MixtureDataset) and set(ds.dataset_statistics) == {LABELED, ACTION_FREE}
    batch = next(iter(make_dataloader(ds, batch_size=4)))
    assert tuple(batch[keys.IMAGE].shape) == (4, 224, 224, 3) and tuple(batch[keys.ACTION].shape) == (4, 2, 7)
    total = sum(1 for _ in cfg.build(rank=0, world_size=1))  # finite sources are drained completely
    # chunk of 2: each episode's last step starts no sample
    assert total == sum(episode_length(i) - 1 for i in range(20)) + sum(
        episode_length(100 + i) - 1 for i in range(3)
    )


def _ids(samples):
    return [(s[keys.DATASET_NAME], s[keys.EPISODE_ID], s[keys.STEP]) for s in samples]


def test_resume_position_continues_the_stream_exactly(data_root, stats, monkeypatch):
    cfg = _cfg(data_root, train_percent=10, repeat=True, shuffle_buffer_size=6, image_aug=True)
    full_it = iter(RLDSFrameDataset(cfg, LABELED, stats[LABELED], 0, 1))
    full = [next(full_it) for _ in range(40)]  # 10 batches of 4, more than the 2 episodes (an epoch)
    resumed = RLDSFrameDataset(cfg, LABELED, stats[LABELED], 0, 1)
    resumed.set_resume_position(consumed_batches=7, batch_size=4)
    tail = [s for _, s in zip(range(12), resumed)]
    assert _ids(tail) == _ids(full[28:])
    np.testing.assert_array_equal(tail[0][keys.IMAGE], full[28][keys.IMAGE])  # same augmentation draws
    # DataLoader workers: worker 1 of 2 served batches 1, 3, 5 of the first 7
    monkeypatch.setattr(dataset_mod, "get_worker_info", lambda: types.SimpleNamespace(id=1, num_workers=2))
    assert dataset_mod._samples_to_skip((7, 4)) == 12
    with pytest.raises(ValueError, match="batch_size=0"):
        resumed.set_resume_position(3, 0)


def test_mixture_resume_position_continues_the_stream_exactly(data_root, stats):
    def mixture():
        labeled_cfg = _cfg(data_root, train_percent=10, repeat=True, shuffle_buffer_size=4)
        video_cfg = _cfg(
            data_root, dataset_names=[ACTION_FREE], split="all", repeat=True, shuffle_buffer_size=4
        )
        return MixtureDataset(
            [
                RLDSFrameDataset(labeled_cfg, LABELED, stats[LABELED], 0, 1),
                RLDSFrameDataset(video_cfg, ACTION_FREE, stats[ACTION_FREE], 0, 1),
            ],
            [1.0, 1.0],
            seed=3,
        )

    it = iter(mixture())
    full = [next(it) for _ in range(30)]
    resumed = mixture()
    resumed.set_resume_position(consumed_batches=5, batch_size=4)
    assert _ids([s for _, s in zip(range(10), resumed)]) == _ids(full[20:])


def test_decoded_frame_cache_gives_the_same_samples_and_decodes_each_frame_once(
    data_root, stats, monkeypatch
):
    cfg = _cfg(
        data_root, train_percent=10, repeat=True, load_wrist=True, image_aug=True, shuffle_buffer_size=8
    )
    n = 3 * sum(episode_length(i) for i in range(2))  # three passes over the two train episodes
    plain = RLDSFrameDataset(cfg, LABELED, stats[LABELED], 0, 1)
    cached = RLDSFrameDataset(
        DataConfig(**{**cfg.__dict__, "frame_cache_mb": 64}), LABELED, stats[LABELED], 0, 1
    )
    decoded = []
    real = dataset_mod.decode_frame
    monkeypatch.setattr(
        dataset_mod, "decode_frame", lambda jpeg, size: decoded.append(jpeg) or real(jpeg, size)
    )
    a = [s for s, _ in zip(plain, range(n))]
    decoded.clear()
    b = [s for s, _ in zip(cached, range(n))]
    for x, y in zip(a, b, strict=True):
        assert x[keys.STEP] == y[keys.STEP]
        for k in (
            keys.IMAGE,
            keys.FUTURE_IMAGE,
            keys.WRIST_IMAGE,
        ):  # augmented copies: the cache is untouched
            np.testing.assert_array_equal(x[k], y[k])
    assert len(decoded) == len(set(decoded)) == len(cached.frames)  # every distinct JPEG decoded once
    assert cached.frames.bytes == len(cached.frames) * 224 * 224 * 3


def test_decoded_frame_cache_stops_growing_at_its_bound(data_root, stats):
    cfg = _cfg(data_root, train_percent=10, frame_cache_mb=1)  # 1 MiB holds 6 frames of 224 px
    ds = RLDSFrameDataset(cfg, LABELED, stats[LABELED], 0, 1)
    samples = list(ds)
    assert len(ds.frames) == 6 and ds.frames.bytes <= 2**20
    again = list(RLDSFrameDataset(_cfg(data_root, train_percent=10), LABELED, stats[LABELED], 0, 1))
    for x, y in zip(samples, again, strict=True):
        np.testing.assert_array_equal(x[keys.FUTURE_IMAGE], y[keys.FUTURE_IMAGE])
    with pytest.raises(ValueError, match="frame_cache_mb=-1 must be >= 0"):
        _cfg(data_root, frame_cache_mb=-1)
