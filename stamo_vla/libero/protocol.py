"""The upstream OpenVLA LIBERO observation/action protocol in numpy + PIL (docs/reference/openvla.md §3.4-3.5).

Upstream does this with tensorflow, which must never be imported next to the MuJoCo renderer, so every
function here is TF-free, and each reproduces its TF original bit for bit:

- ``resize_like_rlds``: the JPEG round trip encodes with PIL/libjpeg-turbo at quality 95 with 4:2:0 chroma
  subsampling, ``tf.image.encode_jpeg``'s defaults (TF decodes PIL's bytes and its own to identical
  pixels), and decodes as ``tf.io.decode_image`` does: libjpeg-turbo's fast integer IDCT
  (``INTEGER_FAST``) with fancy upsampling, through ``simplejpeg`` (the ``sim`` extra; Pillow cannot
  select that IDCT). The lanczos3 antialiased resize is ``tf_resize``, a float32 port of TF's
  ``ScaleAndTranslate`` kernel. Measured against TF 2.21 on 118 images (42 LIBERO frames, ramps, noise,
  shapes; 256 and 128 px inputs): identical pixels. Without simplejpeg the decode falls back to PIL's
  accurate IDCT (one warning), which differs from TF by a mean of 1.1 grey levels (max 17) on those images.
- ``center_crop`` reproduces ``tf.image.crop_and_resize`` sampling (bilinear, align-corners style grid)
  and ``tf.image.convert_image_dtype``'s float -> uint8 conversion exactly.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from stamo_vla.libero.tf_resize import lanczos3_resize_f32

# tf.image.encode_jpeg defaults: quality=95, chroma_downsampling=True (4:2:0)
JPEG_QUALITY = 95
# image side the OpenVLA vision backbone sees
POLICY_IMAGE_SIZE = 224
# fraction of the image *area* kept by the upstream center crop (side = sqrt(0.9))
CENTER_CROP_AREA = 0.9


def _check_image(img: np.ndarray, name: str = "img") -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an (H, W, 3) uint8 RGB array; got shape {img.shape} dtype {img.dtype}"
        )
    return img


def flip_image(raw: np.ndarray) -> np.ndarray:
    """Rotate a raw (upside-down) robosuite frame by 180 degrees: ``raw[::-1, ::-1]`` (contiguous copy)."""
    return np.ascontiguousarray(_check_image(raw, "raw")[::-1, ::-1])


@functools.lru_cache(maxsize=1)
def _fast_idct_decoder() -> Callable[[bytes], np.ndarray] | None:
    """simplejpeg's decode with TF's settings (fast integer IDCT, fancy upsampling), or None (warns once)."""
    try:
        import simplejpeg
    except ImportError:
        warnings.warn(
            "simplejpeg is not installed (pip install 'stamo-vla[sim]'): policy frames are JPEG-decoded "
            "with PIL's accurate IDCT instead of TF's fast one and differ from upstream's by about 1 grey "
            "level on average",
            stacklevel=3,
        )
        return None
    return functools.partial(simplejpeg.decode_jpeg, colorspace="RGB", fastdct=True, fastupsample=False)


def jpeg_round_trip(img: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode to JPEG and decode again, as the RLDS builder stored and upstream's loader read frames.

    Encodes with PIL (quality 95, 4:2:0) and decodes with TF's fast integer IDCT via simplejpeg; falls
    back to PIL's accurate IDCT when simplejpeg is missing.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_image(img)).save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    decode = _fast_idct_decoder()
    if decode is not None:
        return decode(buf.getvalue())
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def lanczos_resize(img: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(img, (size, size), "lanczos3", antialias=True)``, rounded and clipped to uint8."""
    out = lanczos3_resize_f32(_check_image(img), size, size)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def resize_like_rlds(img: np.ndarray, size: int = POLICY_IMAGE_SIZE) -> np.ndarray:
    """JPEG round trip then lanczos3-antialias resize to (size, size), as upstream ``resize_image`` does."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size={size!r} must be a positive int")
    return lanczos_resize(jpeg_round_trip(img), size)


def _crop_and_resize(
    img: np.ndarray, box: tuple[np.float32, np.float32, np.float32, np.float32], out_h: int, out_w: int
) -> np.ndarray:
    """``tf.image.crop_and_resize`` for one float32 image and one normalized box (y1, x1, y2, x2), bilinear.

    The sampling grid and the lerps are float32, in the order of TF's CPU kernel.
    """
    h, w = img.shape[:2]
    y1, x1, y2, x2 = box

    def grid(lo: np.float32, hi: np.float32, n_in: int, n_out: int) -> np.ndarray:
        if n_out == 1:
            return np.array([np.float32(0.5) * (lo + hi) * np.float32(n_in - 1)], np.float32)
        step = (hi - lo) * np.float32(n_in - 1) / np.float32(n_out - 1)
        return lo * np.float32(n_in - 1) + np.arange(n_out, dtype=np.float32) * step

    ys, xs = grid(y1, y2, h, out_h), grid(x1, x2, w, out_w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1i, x1i = np.ceil(ys).astype(int), np.ceil(xs).astype(int)
    dy, dx = (ys - y0.astype(np.float32))[:, None, None], (xs - x0.astype(np.float32))[None, :, None]
    top = img[y0][:, x0] + (img[y0][:, x1i] - img[y0][:, x0]) * dx
    bottom = img[y1i][:, x0] + (img[y1i][:, x1i] - img[y1i][:, x0]) * dx
    return top + (bottom - top) * dy


def center_crop(img: np.ndarray, area: float = CENTER_CROP_AREA) -> np.ndarray:
    """Crop the centred square-scaled box keeping `area` of the image, resize back to the input size.

    Matches upstream ``crop_and_resize(image, crop_scale=0.9)`` in float32: side fraction ``sqrt(area)``,
    bilinear ``tf.image.crop_and_resize`` on the image in [0, 1] (``convert_image_dtype``: times 1/255),
    clip, then ``convert_image_dtype`` back to uint8 (times 255.5, truncated).
    """
    img = _check_image(img)
    if not 0.0 < area <= 1.0:
        raise ValueError(f"area={area!r} must be in (0, 1]; upstream uses 0.9")
    side = np.clip(np.sqrt(np.float32(area)), np.float32(0), np.float32(1))
    off = (np.float32(1) - side) / np.float32(2)
    x = img.astype(np.float32) * np.float32(1.0 / 255)
    out = np.clip(
        _crop_and_resize(x, (off, off, off + side, off + side), img.shape[0], img.shape[1]), 0.0, 1.0
    )
    # convert_image_dtype(float -> uint8, saturate=True) scales by 255.5 and truncates
    return np.clip(out * np.float32(255.5), 0, 255).astype(np.uint8)


# alias: prepare_image's `center_crop` flag shadows the function name
_center_crop = center_crop


def prepare_image(
    raw_obs_image: np.ndarray, size: int = POLICY_IMAGE_SIZE, center_crop: bool = False
) -> np.ndarray:
    """Raw env frame -> the upright (size, size, 3) uint8 image a policy sees (flip, resize, optional crop).

    Args:
        raw_obs_image: the simulator's frame (upside down).
        size: the side of the image the policy sees.
        center_crop: crop the centre and resize back, as upstream does for models trained with image
            augmentation.
    """
    img = resize_like_rlds(flip_image(raw_obs_image), size)
    return _center_crop(img) if center_crop else img


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite ``transform_utils.quat2axisangle``: xyzw quaternion -> axis * angle (3,).

    The w component is clipped to [-1, 1]; a zero rotation (``sqrt(1 - w^2) == 0``) gives zeros.
    """
    q = np.array(quat, dtype=np.float64).reshape(4)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def proprio_from_obs(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The 8-D LIBERO state of modified_libero_rlds: eef pos (3), axis-angle (3), gripper qpos (2), float32."""
    missing = [k for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos") if k not in obs]
    if missing:
        raise ValueError(f"observation lacks {missing}; got keys {sorted(obs)[:12]}...")
    return np.concatenate(
        [
            np.asarray(obs["robot0_eef_pos"], dtype=np.float64).reshape(3),
            quat2axisangle(obs["robot0_eef_quat"]),
            np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64).reshape(2),
        ]
    ).astype(np.float32)


def postprocess_action(action: np.ndarray) -> np.ndarray:
    """Dataset-convention action(s) (gripper 1 = open, 0 = closed) -> env action(s) (-1 open, +1 close).

    Upstream ``normalize_gripper_action(binarize=True)`` then ``invert_gripper_action``: g -> 2g - 1,
    ``np.sign`` (so exactly 0.5 maps to 0, "hold"), then times -1. Arm dims pass through. Works on (7,)
    or any (..., 7) array; returns float64.
    """
    a = np.array(action, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != 7:
        raise ValueError(f"action must have 7 values in its last axis (6 arm + gripper); got shape {a.shape}")
    a[..., -1] = -np.sign(2.0 * a[..., -1] - 1.0)
    return a
