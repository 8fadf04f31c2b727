"""Reader: documented keys/shapes/dtypes, upright images, sharding, and clear errors for bad paths and specs."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import ACTION_FREE, LABELED, NUM_EPISODES, episode_length, make_episode, written_order

from stamo_vla.data import rlds


def test_list_datasets(data_root, tmp_path):
    assert rlds.list_datasets(data_root) == sorted([LABELED, ACTION_FREE])
    assert rlds.list_datasets(tmp_path / "missing") == []


def test_iter_episodes_keys_shapes_dtypes_and_upright_images(data_root):
    episodes = list(rlds.iter_episodes(data_root, LABELED, "train[:3]"))
    assert len(episodes) == 3
    for i, ep in zip(written_order()[:3], episodes):
        n, src = episode_length(i), make_episode(i)
        assert ep["image"].shape == ep["wrist_image"].shape == (n, 256, 256, 3)
        assert ep["image"].dtype == ep["wrist_image"].dtype == np.uint8
        assert ep["state"].shape == (n, 8) and ep["state"].dtype == np.float32
        assert ep["joint_state"].shape == (n, 7) and ep["action"].shape == (n, 7)
        assert ep["action"].dtype == ep["joint_state"].dtype == np.float32
        assert ep["language_instruction"] == src["language_instruction"]
        assert ep["file_path"] == src["file_path"] and ep["has_action"] is True
        np.testing.assert_array_equal(ep["action"], src["action"])
        # upright: the white marker is in the top rows of the main camera, the bottom rows of the wrist camera
        assert ep["image"][:, :8].mean() > 240 and ep["image"][:, -8:].mean() < 40
        assert ep["wrist_image"][:, -8:].mean() > 240 and ep["wrist_image"][:, :8].mean() < 15
        # the step marker block identifies the frame
        np.testing.assert_allclose(ep["image"][:, 128, 64, 0], 30 + 10 * np.arange(n), atol=4)


def test_encoded_images_and_no_images(data_root):
    ep = next(rlds.iter_episodes(data_root, LABELED, "train[:1]", decode_images=False))
    assert isinstance(ep["image"][0], bytes) and ep["image"][0][:2] == b"\xff\xd8"  # JPEG magic
    ep = next(rlds.iter_episodes(data_root, LABELED, "train[:1]", load_images=False))
    assert "image" not in ep and ep["state"].shape == (episode_length(written_order()[0]), 8)


def test_action_free_dataset_reports_has_action_false(data_root):
    eps = list(rlds.iter_episodes(data_root, ACTION_FREE, load_images=False))
    assert len(eps) == 3 and all(not e["has_action"] and np.isnan(e["action"]).all() for e in eps)


def test_shards_are_disjoint_and_cover_the_split(data_root):
    split = "train[:95%]"
    full = [e["file_path"] for e in rlds.iter_episodes(data_root, LABELED, split, load_images=False)]
    assert len(full) == 19  # tfds rounding of 95% of 20 episodes, as upstream
    shards = [
        [
            e["file_path"]
            for e in rlds.iter_episodes(data_root, LABELED, split, load_images=False, shard=(i, 3))
        ]
        for i in range(3)
    ]
    assert sum(shards, []) == full
    assert all(shards)
    builder = rlds.open_builder(data_root, LABELED)
    # more shards than episodes: one shard is empty, the others still cover the split exactly once
    subs = [rlds.shard_split(builder, "train[:2]", (i, 3)) for i in range(3)]
    assert sorted(s for s in subs if s) == ["train[0:1]", "train[1:2]"] and subs.count(None) == 1


def test_missing_root_dir(tmp_path):
    with pytest.raises(rlds.DatasetNotFoundError, match="does not exist"):
        list(rlds.iter_episodes(tmp_path / "nope", LABELED))


def test_wrong_name_lists_found_datasets(data_root):
    with pytest.raises(rlds.DatasetNotFoundError) as err:
        rlds.resolve_dataset_dir(data_root, "toy_libero_no_noop")
    msg = str(err.value)
    assert LABELED in msg and ACTION_FREE in msg and f"Did you mean '{LABELED}'" in msg


def test_wrong_level_says_what_to_pass(data_root):
    with pytest.raises(
        rlds.DatasetNotFoundError, match=f"--data_root_dir '{data_root}' --dataset_name '{LABELED}'"
    ):
        rlds.resolve_dataset_dir(data_root / LABELED, LABELED)
    with pytest.raises(rlds.DatasetNotFoundError, match="version directory"):
        rlds.resolve_dataset_dir(data_root / LABELED / "1.0.0", LABELED)
    with pytest.raises(rlds.DatasetNotFoundError, match="one level down"):
        rlds.resolve_dataset_dir(data_root.parent, LABELED)


def test_dataset_lacking_a_required_feature_is_named(tmp_path):
    from stamo_vla.data.tf_setup import import_tfds

    _, tfds = import_tfds("test")
    f = tfds.features
    features = f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {
                            "image": f.Image(shape=(8, 8, 3), encoding_format="jpeg"),
                            "state": f.Tensor(shape=(8,), dtype=np.float32),
                        }
                    ),
                    "action": f.Tensor(shape=(7,), dtype=np.float32),
                }
            )
        }
    )

    def gen():
        step = {"observation": {"image": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(8, np.float32)}}
        yield "0", {"steps": [{**step, "action": np.zeros(7, np.float32)}]}

    with tfds.core.registered.skip_registration():

        class Partial(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {"train": gen()}

            def _generate_examples(self):
                return gen()

        Partial.name, Partial.__module__ = "partial_rlds", "partial_rlds_test"
    Partial(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    )
    with pytest.raises(ValueError, match="lacks required features") as err:
        rlds.open_builder(tmp_path, "partial_rlds")
    assert "steps/observation/wrist_image" in str(err.value) and "episode_metadata/file_path" in str(
        err.value
    )


def test_fingerprint_changes_with_contents(data_root, tmp_path):
    import shutil

    copy = tmp_path / LABELED / "1.0.0"
    shutil.copytree(data_root / LABELED / "1.0.0", copy)
    before = rlds.dataset_fingerprint(copy)
    (copy / "dataset_statistics_abc.json").write_text("{}")  # our cache files do not count
    assert rlds.dataset_fingerprint(copy) == before
    rec = next(copy.glob("*.tfrecord-*"))
    rec.write_bytes(rec.read_bytes() + b"x")
    assert rlds.dataset_fingerprint(copy) != before
    assert NUM_EPISODES == 20


@pytest.mark.slow
def test_tensorflow_then_torch_dynamo_does_not_crash():
    """triton (loaded by torch._dynamo / transformers) segfaults when loaded after TF; import_tfds guards it."""
    import os
    import subprocess
    import sys

    code = (
        "from stamo_vla.data.tf_setup import import_tfds\n"
        "tf, _ = import_tfds('test')\n"
        "import torch._dynamo\n"
        "print(float(tf.reduce_sum(tf.ones(3))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "3.0"
