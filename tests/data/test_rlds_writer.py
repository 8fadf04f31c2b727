"""The writer produces the exact modified_libero_rlds spec, readable by plain tfds, and resumes safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from data_helpers import LABELED, NUM_EPISODES, episode_length, make_episode, written_order

from stamo_vla.data import spec
from stamo_vla.data.rlds_writer import RLDSShardWriter, validate_episode, write_rlds_dataset

_FRESH_READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow_datasets as tfds
    root, name = sys.argv[1], sys.argv[2]
    assert "stamo_vla" not in sys.modules
    b1 = tfds.builder(name, data_dir=root)
    b2 = tfds.builder_from_directory(f"{root}/{name}/1.0.0")
    out = {"builder_cls": type(b1).__name__, "num_examples": b2.info.splits["train"].num_examples}
    ep = next(iter(tfds.as_numpy(b1.as_dataset(split="train"))))
    steps = list(tfds.as_numpy(b1.as_dataset(split="train").take(1).flat_map(lambda e: e["steps"])))
    def flat(d, p=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, p + k + "/")
            else:
                yield p + k, v
    out["step_features"] = {
        k: [list(np.shape(v)), "bytes" if isinstance(v, bytes) else np.asarray(v).dtype.name]
        for k, v in flat(steps[0])
    }
    out["file_path"] = ep["episode_metadata"]["file_path"].decode()
    out["reward"] = [float(s["reward"]) for s in steps]
    out["is_first"] = [bool(s["is_first"]) for s in steps]
    out["is_last"] = [bool(s["is_last"]) for s in steps]
    out["is_terminal"] = [bool(s["is_terminal"]) for s in steps]
    out["discount"] = [float(s["discount"]) for s in steps]
    out["modules"] = sorted(m for m in sys.modules if m.startswith("stamo"))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_fresh_process_plain_tfds_reads_every_feature(data_root):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_READER, str(data_root), LABELED],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(data_root),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["builder_cls"] == "ReadOnlyBuilder"
    assert out["modules"] == []
    assert out["num_examples"] == NUM_EPISODES
    expected = {
        "observation/image": [[256, 256, 3], "uint8"],
        "observation/wrist_image": [[256, 256, 3], "uint8"],
        "observation/state": [[8], "float32"],
        "observation/joint_state": [[7], "float32"],
        "action": [[7], "float32"],
        "discount": [[], "float32"],
        "reward": [[], "float32"],
        "is_first": [[], "bool"],
        "is_last": [[], "bool"],
        "is_terminal": [[], "bool"],
        "language_instruction": [[], "bytes"],
    }
    assert out["step_features"] == expected
    first = written_order()[0]
    assert out["file_path"] == make_episode(first)["file_path"]
    n = episode_length(first)
    assert out["reward"] == [0.0] * (n - 1) + [1.0]
    assert out["discount"] == [1.0] * n
    assert out["is_first"] == [True] + [False] * (n - 1)
    assert out["is_last"] == out["is_terminal"] == [False] * (n - 1) + [True]


def test_layout_and_feature_spec_files(data_root):
    version_dir = data_root / LABELED / spec.DEFAULT_VERSION
    names = sorted(os.listdir(version_dir))
    assert "dataset_info.json" in names and "features.json" in names
    assert any(n.startswith(f"{LABELED}-train.tfrecord-") for n in names)
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["name"] == LABELED and info["version"] == "1.0.0"
    features = (version_dir / "features.json").read_text()
    assert '"jpeg"' in features and '"wrist_image"' in features and '"joint_state"' in features


def test_values_round_trip_through_tfds(data_root):
    from stamo_vla.data.tf_setup import import_tfds

    _, tfds = import_tfds("test")
    builder = tfds.builder_from_directory(str(data_root / LABELED / "1.0.0"))
    episodes = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert [e["episode_metadata"]["file_path"].decode() for e in episodes] == [
        make_episode(i)["file_path"] for i in written_order()
    ]  # the seeded interleaved order, not arrival order
    ep, src = episodes[written_order().index(3)], make_episode(3)
    steps = list(ep["steps"])  # the nested steps Dataset comes back as an iterable of step dicts
    image = np.stack([x["observation"]["image"] for x in steps])
    wrist = np.stack([x["observation"]["wrist_image"] for x in steps])
    state = np.stack([x["observation"]["state"] for x in steps])
    joint = np.stack([x["observation"]["joint_state"] for x in steps])
    action = np.stack([x["action"] for x in steps])
    lang = [x["language_instruction"] for x in steps]
    np.testing.assert_array_equal(state, src["state"])
    np.testing.assert_array_equal(joint, src["joint_state"])
    np.testing.assert_array_equal(action, src["action"])
    assert {x.decode() for x in lang} == {src["language_instruction"]}
    # JPEG is lossy; flat synthetic blocks survive within a few levels, and the image stays upright
    assert np.abs(image.astype(int) - src["image"]).mean() < 2.0
    assert np.abs(wrist.astype(int) - src["wrist_image"]).mean() < 2.0
    assert image[:, :8].min() > 240 and wrist[:, :8].max() < 15


def test_resume_skips_staged_episodes_and_keeps_finished_ones(tmp_path):
    writer = RLDSShardWriter(tmp_path, "resume_test")
    assert writer.add_episode(make_episode(0, length=3))
    assert writer.add_episode(make_episode(1, length=3))
    # an interrupted atomic write leaves only a hidden temp file, which is not an episode
    (writer.staging_dir / ".ep-000002-0123456789abcdef.npz.x.tmp").write_bytes(b"torn")
    resumed = RLDSShardWriter(tmp_path, "resume_test")
    assert len(resumed) == 2 and resumed.has_episode(make_episode(1)["file_path"])
    assert not resumed.add_episode(make_episode(1, length=3))  # duplicate: skipped
    assert resumed.add_episode(make_episode(2, length=4))
    out = resumed.finalize()
    from stamo_vla.data.tf_setup import import_tfds

    _, tfds = import_tfds("test")
    eps = list(tfds.as_numpy(tfds.builder_from_directory(str(out)).as_dataset(split="train")))
    assert [e["episode_metadata"]["file_path"].decode() for e in eps] == [
        make_episode(i)["file_path"] for i in written_order(3)
    ]  # the order depends on the set of episodes, not on when they arrived
    # finalize again after more episodes: the dataset is rebuilt with all of them
    resumed.add_episode(make_episode(3, length=2))
    resumed.finalize(remove_staging=True)
    builder = tfds.builder("resume_test", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 4
    assert not resumed.staging_dir.exists()
    assert sorted(os.listdir(tmp_path / "resume_test")) == ["1.0.0"]


def test_action_free_episode_keeps_nan_actions(tmp_path):
    out = write_rlds_dataset([make_episode(5, length=3, action_free=True)], tmp_path, "video_only")
    from stamo_vla.data.tf_setup import import_tfds

    _, tfds = import_tfds("test")
    ep = next(iter(tfds.as_numpy(tfds.builder_from_directory(str(out)).as_dataset(split="train"))))
    assert np.isnan(np.stack([x["action"] for x in ep["steps"]])).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": np.zeros((3, 7), np.float32)}, "episode['state'] has shape (3, 7)"),
        ({"image": np.zeros((3, 256, 256, 3), np.float32)}, "expected uint8"),
        ({"action": np.array([[np.nan] * 7, [0.0] * 7, [0.0] * 7], np.float32)}, "partly NaN"),
        ({"joint_state": np.zeros((2, 7), np.float32)}, "has 2 steps but 'image' has 3"),
        ({"language_instruction": ""}, "language_instruction"),
    ],
)
def test_bad_episodes_are_rejected_with_clear_errors(change, message):
    ep = {**make_episode(0, length=3), **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate_episode(ep)


def test_bad_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a valid tfds name"):
        RLDSShardWriter(tmp_path, "Bad-Name")
    with pytest.raises(ValueError, match="no staged episodes"):
        RLDSShardWriter(tmp_path, "empty_one").finalize()


def test_a_written_dataset_opens_the_way_upstreams_trainer_reads_it(data_root, tmp_path):
    import shutil

    from stamo_vla.data.tf_setup import import_tfds

    _, tfds = import_tfds("test")
    info = json.loads((data_root / LABELED / spec.DEFAULT_VERSION / "dataset_info.json").read_text())
    assert "disableShuffling" not in info  # like modified_libero_rlds

    def upstream_read(root):
        # OpenVLA's make_dataset_from_rlds: tfds.builder(name, data_dir=...) then dlimp's
        # from_rlds(shuffle=True): shuffled record files, interleaved reads
        builder = tfds.builder(LABELED, data_dir=str(root))
        ds = builder.as_dataset(
            split="train[:95%]",
            shuffle_files=True,
            read_config=tfds.ReadConfig(interleave_cycle_length=16, shuffle_seed=0),
        )
        return {e["episode_metadata"]["file_path"].decode() for e in tfds.as_numpy(ds)}

    expected = {make_episode(i)["file_path"] for i in range(NUM_EPISODES)}
    assert upstream_read(data_root) <= expected and len(upstream_read(data_root)) == round(
        0.95 * NUM_EPISODES
    )
    # the flag the writer used to leave behind makes tfds refuse exactly this read
    ordered = tmp_path / "ordered"
    shutil.copytree(data_root / LABELED, ordered / LABELED)
    info_file = ordered / LABELED / spec.DEFAULT_VERSION / "dataset_info.json"
    info_file.write_text(json.dumps({**info, "disableShuffling": True}))
    with pytest.raises(ValueError, match="ordered dataset"):
        upstream_read(ordered)


def test_a_training_frame_is_tf_decode_plus_lanczos3_bit_for_bit(data_root):
    from stamo_vla.data.config import DataConfig
    from stamo_vla.data.dataset import RLDSFrameDataset
    from stamo_vla.data.rlds import iter_episodes
    from stamo_vla.data.statistics import compute_statistics
    from stamo_vla.data.tf_setup import import_tfds

    tf, _ = import_tfds("test")
    raw = next(iter_episodes(data_root, LABELED, "train", decode_images=False))
    cfg = DataConfig(data_root_dir=str(data_root), dataset_names=[LABELED], repeat=False, load_wrist=True)
    ds = RLDSFrameDataset(cfg, LABELED, compute_statistics(data_root, LABELED))
    ep = next(iter(ds._episodes((0, 1), 0)))
    for t in (0, 3):
        sample = ds.make_sample(ep, t, np.random.default_rng(0))
        for key, frames in (("image", raw["image"]), ("wrist_image", raw["wrist_image"])):
            # upstream: decode_and_resize (tf.io.decode_image) + dlimp resize_image, written out
            img = tf.io.decode_image(frames[t], expand_animations=False, dtype=tf.uint8)
            img = tf.image.resize(img, (224, 224), method="lanczos3", antialias=True)
            expected = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8).numpy()
            np.testing.assert_array_equal(sample[key], expected)  # IMAGE / WRIST_IMAGE keys
