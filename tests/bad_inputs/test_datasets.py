"""Datasets as other tools write them: episodes that share a file path (upstream's LIBERO builder), an older writer's
ordering flag, task-by-task order, upstream statistics without a proprio block."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

# upstream's LIBERO builder stores the task's HDF5 file for every demo of it (openvla/rlds_dataset_builder)
SHARED_FILE_PATH = "/data/libero/libero_spatial/pick_up_the_black_bowl_demo.hdf5"


def write_shared_file_path_dataset(root, name: str, episodes: list[dict]) -> None:
    """Write `episodes` as upstream's builder does: every one with the same ``episode_metadata/file_path``."""
    from stamo_vla.data.rlds_writer import RLDSShardWriter

    writer = RLDSShardWriter(root, name)
    for i, episode in enumerate(episodes):  # the writer stages by file path: stage under unique ones first
        writer.add_episode({**episode, "file_path": f"staged_{i}"})
    for path in writer.staged_files():
        with np.load(path) as staged:
            arrays = dict(staged)
        arrays["file_path"] = np.asarray(SHARED_FILE_PATH)
        np.savez(path, **arrays)
    writer.finalize(remove_staging=True)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory, make_episode):
    toy_episode = make_episode

    root = tmp_path_factory.mktemp("shared_file_path")
    write_shared_file_path_dataset(root, "toy_shared", [toy_episode(i) for i in range(4)])
    return root


@pytest.fixture(scope="module")
def encoder():
    import torch

    from stamo_vla.stamo import StaMoEncoder, tiny_config

    torch.manual_seed(0)
    return StaMoEncoder(tiny_config()).eval()


@pytest.mark.slow
def test_episodes_that_share_a_file_path_each_get_their_own_targets(shared_root, encoder, tmp_path):
    import torch

    from stamo_vla import keys
    from stamo_vla.data.config import DataConfig
    from stamo_vla.data.dataset import RLDSFrameDataset
    from stamo_vla.data.episodes import episode_id
    from stamo_vla.data.pseudo_labels import label_latent_actions, load_latent_actions, rlds_episodes
    from stamo_vla.data.rlds import iter_episodes
    from stamo_vla.data.statistics import compute_statistics
    from stamo_vla.data.target_cache import TargetCache, _frames_to_pixels, build_target_cache

    episodes = list(iter_episodes(shared_root, "toy_shared", decode_images=False))
    assert len(episodes) == 4 and {ep["file_path"] for ep in episodes} == {SHARED_FILE_PATH}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "encoding that episode again" for an episode of the same file
        out = build_target_cache(
            shared_root, "toy_shared", encoder, tmp_path / "cache" / "toy_shared", batch_size=8
        )
    assert len(list((out / "episodes").iterdir())) == 4
    cache = TargetCache.open(out, shared_root, "toy_shared")
    own = {}
    for ep in episodes:
        with torch.no_grad():
            own[episode_id(ep)] = encoder.encode(_frames_to_pixels(ep["image"])).numpy()
        np.testing.assert_allclose(cache.load_episode(ep), own[episode_id(ep)], atol=1e-5)

    # what training reads: every sample's state is its own episode's
    cfg = DataConfig(
        data_root_dir=str(shared_root),
        dataset_names=["toy_shared"],
        split="all",
        repeat=False,
        shuffle_buffer_size=0,
        horizon=2,
        use_target_cache=True,
        target_cache_root=str(tmp_path / "cache"),
    )
    stats = compute_statistics(shared_root, "toy_shared")
    samples = list(RLDSFrameDataset(cfg, "toy_shared", stats, rank=0, world_size=1))
    assert {s[keys.EPISODE_ID] for s in samples} == set(own)
    for s in samples:
        np.testing.assert_allclose(s[keys.STATE], own[s[keys.EPISODE_ID]][s[keys.STEP]], atol=1e-5)

    labels = load_latent_actions(
        label_latent_actions(
            rlds_episodes(shared_root, "toy_shared"), encoder, tmp_path / "labels", horizon=2
        )
    )
    assert len(labels) == 4 and all(key.startswith(SHARED_FILE_PATH + "#") for key in labels)


@pytest.mark.slow
def test_a_dataset_holding_one_episode_twice_is_refused(tmp_path, encoder, make_episode):
    toy_episode = make_episode

    from stamo_vla.data.target_cache import build_target_cache

    write_shared_file_path_dataset(tmp_path, "toy_twice", [toy_episode(0), toy_episode(1), toy_episode(0)])
    with pytest.raises(ValueError, match=r"episodes \d and \d are the same episode .*Remove the duplicate"):
        build_target_cache(tmp_path, "toy_twice", encoder, tmp_path / "cache")


@pytest.mark.slow
def test_a_cache_keyed_by_file_path_is_refused_with_the_rebuild_command(shared_root, encoder, tmp_path):
    from stamo_vla.data.target_cache import StaleTargetCacheError, TargetCache, build_target_cache

    out = build_target_cache(shared_root, "toy_shared", encoder, tmp_path / "cache", batch_size=8)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(StaleTargetCacheError, match=r"keyed episodes by file_path.*--overwrite true"):
        TargetCache.open(out, shared_root, "toy_shared")


@pytest.mark.slow
def test_a_dataset_an_older_writer_marked_ordered_warns_with_the_fix(toy_rlds_root, tmp_path):
    import shutil

    from stamo_vla.data import spec
    from stamo_vla.data.rlds import iter_episodes

    shutil.copytree(toy_rlds_root / "toy_push_no_noops", tmp_path / "toy_push_no_noops")
    info_file = tmp_path / "toy_push_no_noops" / spec.DEFAULT_VERSION / "dataset_info.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what our writer writes today carries no flag
        assert len(list(iter_episodes(tmp_path, "toy_push_no_noops", load_images=False))) == 4
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "disableShuffling": True}))
    with pytest.warns(
        UserWarning, match=r"sets disableShuffling.*upstream OpenVLA's trainer refuses it.*collect"
    ):
        assert len(list(iter_episodes(tmp_path, "toy_push_no_noops", load_images=False))) == 4


@pytest.mark.slow
def test_episodes_collected_task_by_task_are_written_interleaved(tmp_path, make_episode):
    toy_episode = make_episode

    from stamo_vla.data.rlds import iter_episodes
    from stamo_vla.data.rlds_writer import write_order_key, write_rlds_dataset

    tasks = {}  # arrival order: task 0's four episodes, then task 1's, then task 2's (as collect runs)
    episodes = []
    for task in range(3):
        for k in range(4):
            ep = toy_episode(4 * task + k, length=3)
            ep["file_path"] = f"libero_spatial/task_{task}/init_{k:02d}"
            tasks[ep["file_path"]] = task
            episodes.append(ep)
    write_rlds_dataset(episodes, tmp_path, "toy_tasks")
    written = [ep["file_path"] for ep in iter_episodes(tmp_path, "toy_tasks", load_images=False)]
    assert written == sorted(tasks, key=write_order_key)  # seeded: the same set gives the same order
    task_changes = sum(tasks[a] != tasks[b] for a, b in zip(written, written[1:]))
    assert task_changes > 2  # task by task would change task twice
    held_out = [
        ep["file_path"] for ep in iter_episodes(tmp_path, "toy_tasks", "train[75%:]", load_images=False)
    ]
    assert len({tasks[p] for p in held_out}) > 1  # the validation split is not the last task's episodes


def test_upstream_statistics_without_a_proprio_block_name_the_file_and_shapes(tmp_path):
    from stamo_vla.data.config import DataConfig
    from stamo_vla.data.dataset import build_dataset
    from stamo_vla.data.normalization import normalize

    zeros = [0.0] * 7  # upstream OpenVLA's dataset_statistics.json: a 7-D all-zero proprio block
    block = {key: zeros for key in ("mean", "std", "max", "min", "q01", "q99")}
    stats = {"action": {**block, "q99": [1.0] * 7, "max": [1.0] * 7, "mask": [True] * 6 + [False]}}
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"toy_push_no_noops": {**stats, "proprio": block}}))
    cfg = DataConfig(
        data_root_dir=str(tmp_path),  # refused before any data is read
        dataset_names=["toy_push_no_noops"],
        statistics_path=str(path),
        load_proprio=True,
    )
    with pytest.raises(
        ValueError,
        match=r"dataset_statistics.json' entry 'toy_push_no_noops': 'proprio.q01' has shape \(7,\), expected \(8,\)",
    ):
        build_dataset(cfg)
    with pytest.raises(
        ValueError, match=r"normalize: the statistics have shape \(7,\), the values \(\.\.\., 8\)"
    ):
        normalize(np.zeros((2, 8)), block)


def test_the_writer_refuses_another_episode_under_a_staged_file_path(tmp_path, make_episode):
    toy_episode = make_episode

    from stamo_vla.data.rlds_writer import RLDSShardWriter

    writer = RLDSShardWriter(tmp_path, "toy_names")
    assert writer.add_episode({**toy_episode(0, length=3), "file_path": SHARED_FILE_PATH})
    assert not writer.add_episode(
        {**toy_episode(0, length=3), "file_path": SHARED_FILE_PATH}
    )  # a resumed run
    with pytest.raises(ValueError, match="already staged .* for another episode.*its own file_path"):
        writer.add_episode(
            {**toy_episode(1, length=3), "file_path": SHARED_FILE_PATH}
        )  # was dropped silently
    assert len(writer) == 1
