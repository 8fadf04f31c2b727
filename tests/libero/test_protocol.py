"""The TF-free observation/action protocol against its definitions (and against TF where installed)."""

import io
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from stamo_vla.libero import protocol as P
from stamo_vla.libero.tf_resize import lanczos3_resize_f32
from stamo_vla.optional import is_available


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


# upstream resize_image and crop_and_resize(crop_scale=0.9), run in a subprocess: tensorflow never shares
# a process with the protocol (in the eval it would share one with MuJoCo)
_TF_REFERENCE = """
import sys
import numpy as np
import tensorflow as tf

images = dict(np.load(sys.argv[1]))
out = {}
for name, img in images.items():
    for size in (224, 112):
        t = tf.io.decode_image(tf.image.encode_jpeg(img), expand_animations=False, dtype=tf.uint8)
        t = tf.image.resize(t, (size, size), method="lanczos3", antialias=True)
        out[f"{name}/rlds{size}"] = tf.cast(tf.clip_by_value(tf.round(t), 0, 255), tf.uint8).numpy()
    out[f"{name}/lanczos"] = tf.image.resize(img, (224, 224), method="lanczos3", antialias=True).numpy()
    # upstream's eval crop_and_resize(image, crop_scale=0.9, batch_size=1), its float32 box included
    x = tf.image.convert_image_dtype(tf.convert_to_tensor(out[f"{name}/rlds224"]), tf.float32)[None]
    side = tf.reshape(tf.clip_by_value(tf.sqrt(0.9), 0, 1), (1,))
    off = (1 - side) / 2
    box = tf.stack([off, off, off + side, off + side], axis=1)
    cropped = tf.clip_by_value(tf.image.crop_and_resize(x, box, tf.range(1), (224, 224)), 0, 1)
    out[f"{name}/crop"] = tf.image.convert_image_dtype(cropped[0], tf.uint8, saturate=True).numpy()
np.savez(sys.argv[2], **out)
"""


def _shapes_image(size, seed):
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(0.7)))


@pytest.mark.slow
def test_matches_tensorflow_bit_for_bit(tmp_path):
    if not is_available("tensorflow"):
        pytest.skip("tensorflow is not installed")
    pytest.importorskip("simplejpeg")  # without it the decode falls back to PIL's IDCT (about 1 level off)
    rng = np.random.default_rng(1)
    images = {
        "ramp256": _rand_image(),
        "noise256": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "shapes256": _shapes_image(256, 2),
        "shapes128": _shapes_image(128, 3),  # upsampled to 224
        "wide": _rand_image(96, 160, seed=4),
    }
    np.savez(tmp_path / "in.npz", **images)
    subprocess.run(
        [sys.executable, "-c", _TF_REFERENCE, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    ref = np.load(tmp_path / "out.npz")
    for name, img in images.items():
        for size in (224, 112):
            np.testing.assert_array_equal(
                P.resize_like_rlds(img, size), ref[f"{name}/rlds{size}"], err_msg=name
            )
        np.testing.assert_array_equal(
            lanczos3_resize_f32(img, 224, 224), ref[f"{name}/lanczos"], err_msg=name
        )
        np.testing.assert_array_equal(
            P.center_crop(ref[f"{name}/rlds224"]), ref[f"{name}/crop"], err_msg=name
        )


def test_lanczos_resize_keeps_a_same_size_image_and_a_constant_image():
    img = _shapes_image(64, 5)
    np.testing.assert_array_equal(P.lanczos_resize(img, 64), img)
    grey = np.full((256, 256, 3), 77, np.uint8)
    np.testing.assert_array_equal(P.lanczos_resize(grey, 224), grey[:224, :224])
    np.testing.assert_array_equal(P.lanczos_resize(grey[:128, :128], 224), grey[:224, :224])


def test_jpeg_round_trip_decodes_with_the_fast_idct():
    simplejpeg = pytest.importorskip("simplejpeg")
    from PIL import Image

    img = _shapes_image(128, 6)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling="4:2:0")
    fast = simplejpeg.decode_jpeg(buf.getvalue(), "RGB", fastdct=True, fastupsample=False)
    accurate = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert not np.array_equal(fast, accurate)
    np.testing.assert_array_equal(P.jpeg_round_trip(img), fast)


def test_jpeg_round_trip_without_simplejpeg_falls_back_to_pil_and_warns_once(monkeypatch):
    from PIL import Image

    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # makes `import simplejpeg` raise ImportError
    P._fast_idct_decoder.cache_clear()
    try:
        img = _shapes_image(64, 7)
        with pytest.warns(UserWarning, match=r"simplejpeg is not installed.*stamo-vla\[sim\]"):
            out = P.jpeg_round_trip(img)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            P.jpeg_round_trip(img)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling="4:2:0")
        np.testing.assert_array_equal(out, np.asarray(Image.open(buf).convert("RGB")))
    finally:
        P._fast_idct_decoder.cache_clear()


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
