"""The TF-free observation/action protocol against its definitions (and against TF where installed)."""

import math

import numpy as np
import pytest

from stamo_vla.libero import protocol as P


def _rand_image(h=256, w=256, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content with some texture, like a rendered scene (pure noise exaggerates JPEG error)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def test_flip_is_a_180_degree_rotation_and_its_own_inverse():
    img = _rand_image(5, 7)
    flipped = P.flip_image(img)
    np.testing.assert_array_equal(flipped, np.rot90(img, 2))
    np.testing.assert_array_equal(P.flip_image(flipped), img)
    assert flipped.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        P.flip_image(img.astype(np.float32))


def test_center_crop_full_area_is_identity_and_crop_matches_box_geometry():
    img = _rand_image(224, 224)
    np.testing.assert_array_equal(P.center_crop(img, area=1.0), img)
    # on a horizontal ramp, bilinear sampling is exact: column j samples x = off*(W-1) + j*side
    w = 224
    ramp = np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :, None], (w, w, 3)).copy()
    out = P.center_crop(ramp, area=0.9)
    side = math.sqrt(0.9)
    off = (1 - side) / 2
    x = off * (w - 1) + np.arange(w) * side * (w - 1) / (w - 1)
    expected = np.floor(x / 255 * 255.5)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1)
    assert out.shape == ramp.shape
    assert np.all(out == out[:1])  # rows identical: the crop is vertically centred on a constant image axis
    with pytest.raises(ValueError, match="area"):
        P.center_crop(img, area=0.0)


def test_resize_like_rlds_shape_and_closeness_to_plain_resize():
    img = _rand_image()
    out = P.resize_like_rlds(img, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    no_jpeg = P.lanczos_resize(img, 224)
    assert np.abs(out.astype(int) - no_jpeg.astype(int)).mean() < 3.0  # only the JPEG loss differs
    prepared = P.prepare_image(img, 224, center_crop=True)
    np.testing.assert_array_equal(prepared, P.center_crop(P.resize_like_rlds(P.flip_image(img), 224)))


@pytest.mark.slow
def test_matches_tensorflow_reference_implementation():
    tf = pytest.importorskip("tensorflow")
    img = _rand_image()
    # upstream resize_image: encode_jpeg -> decode -> lanczos3 antialias -> round, clip, uint8
    t = tf.io.decode_image(tf.image.encode_jpeg(img), expand_animations=False, dtype=tf.uint8)
    t = tf.image.resize(t, (224, 224), method="lanczos3", antialias=True)
    ref = tf.cast(tf.clip_by_value(tf.round(t), 0, 255), tf.uint8).numpy()
    diff = np.abs(P.resize_like_rlds(img, 224).astype(int) - ref.astype(int))
    # the residual is TF's fast-IDCT JPEG decode (about 1 level on average; see protocol's docstring)
    assert diff.mean() < 1.5 and diff.max() <= 6
    # upstream crop_and_resize(crop_scale=0.9) on a [0, 1] float image, then convert_image_dtype
    x = tf.image.convert_image_dtype(tf.convert_to_tensor(ref), tf.float32)[None]
    side = math.sqrt(0.9)
    off = (1 - side) / 2
    box = tf.constant([[off, off, off + side, off + side]], tf.float32)
    cropped = tf.clip_by_value(tf.image.crop_and_resize(x, box, [0], (224, 224)), 0, 1)
    ref_crop = tf.image.convert_image_dtype(cropped[0], tf.uint8, saturate=True).numpy()
    assert np.abs(P.center_crop(ref).astype(int) - ref_crop.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("quat", "expected"),
    [
        ((0, 0, 0, 1), (0, 0, 0)),  # identity
        ((0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)), (0, 0, math.pi / 2)),  # 90 deg about z
        ((1, 0, 0, 0), (math.pi, 0, 0)),  # 180 deg about x: the LIBERO gripper-down pose
        ((0, 0, 0, 1.0000001), (0, 0, 0)),  # w clipped to 1 -> zero rotation
        ((0, -math.sin(0.3), 0, math.cos(0.3)), (0, -0.6, 0)),
    ],
)
def test_quat2axisangle_known_values(quat, expected):
    np.testing.assert_allclose(P.quat2axisangle(np.array(quat)), expected, atol=1e-6)


def test_proprio_from_obs_layout():
    obs = {
        "robot0_eef_pos": np.array([0.1, -0.2, 1.1]),
        "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
        "robot0_gripper_qpos": np.array([0.039, -0.039]),
    }
    state = P.proprio_from_obs(obs)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state, [0.1, -0.2, 1.1, math.pi, 0, 0, 0.039, -0.039], atol=1e-6)
    with pytest.raises(ValueError, match="robot0_gripper_qpos"):
        P.proprio_from_obs({"robot0_eef_pos": 0, "robot0_eef_quat": 0})


@pytest.mark.parametrize(
    ("dataset_gripper", "env_gripper"),
    [(1.0, -1.0), (0.0, 1.0), (0.9, -1.0), (0.2, 1.0), (0.5, 0.0)],  # 1 open -> -1 open; 0 closed -> +1 close
)
def test_postprocess_action_gripper_table(dataset_gripper, env_gripper):
    arm = [0.1, -0.2, 0.3, -0.01, 0.02, -0.03]
    out = P.postprocess_action(np.array([*arm, dataset_gripper]))
    np.testing.assert_array_equal(out[:6], arm)
    assert out[6] == env_gripper


def test_postprocess_action_batches_and_rejects_bad_shapes():
    batch = np.array([[0, 0, 0, 0, 0, 0, 1.0], [0, 0, 0, 0, 0, 0, 0.0]])
    np.testing.assert_array_equal(P.postprocess_action(batch)[:, 6], [-1.0, 1.0])
    assert batch[0, 6] == 1.0  # input untouched
    with pytest.raises(ValueError, match="7 values"):
        P.postprocess_action(np.zeros(6))
