"""TF-free augmentation (determinism, shared params, ranges) and DataConfig validation."""

from __future__ import annotations

import numpy as np
import pytest

from stamo_vla.data.augment import AugmentParams, ImageAugConfig, augment_image, sample_params
from stamo_vla.data.config import DataConfig


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_identity_params_leave_the_image_unchanged():
    ident = AugmentParams(
        crop_box=(0.0, 0.0, 1.0, 1.0), brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0
    )
    img = _image()
    assert np.abs(augment_image(img, ident).astype(int) - img).max() <= 1


def test_sampling_is_deterministic_and_within_upstream_ranges():
    cfg = ImageAugConfig()
    a = [sample_params(np.random.default_rng(3), cfg) for _ in range(2)]
    assert a[0] == a[1]
    draws = [sample_params(np.random.default_rng(s), cfg) for s in range(200)]
    for p in draws:
        y0, x0, y1, x1 = p.crop_box
        assert y1 - y0 == pytest.approx(np.sqrt(0.9)) and x1 - x0 == pytest.approx(np.sqrt(0.9))
        assert y0 == pytest.approx(x0)  # dlimp's shared offset draw
        assert abs(p.brightness) <= 0.2 and 0.8 <= p.contrast <= 1.2 and 0.8 <= p.saturation <= 1.2
        assert abs(p.hue) <= 0.05
    assert len({p.brightness for p in draws}) == 200


def test_ops_act_as_documented():
    img = _image()
    base = dict(crop_box=(0.0, 0.0, 1.0, 1.0), brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0)
    bright = augment_image(img, AugmentParams(**{**base, "brightness": 0.1})).astype(float)
    assert 20 < (bright - img).mean() < 26  # +0.1 * 255 minus clipping at 255
    flat = augment_image(img, AugmentParams(**{**base, "contrast": 0.0})).astype(float)
    assert flat.std(axis=(0, 1)).max() < 1.0  # zero contrast collapses to the channel mean
    gray = augment_image(img, AugmentParams(**{**base, "saturation": 0.0})).astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1 and np.abs(gray[..., 1] - gray[..., 2]).max() <= 1
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    shifted = augment_image(red, AugmentParams(**{**base, "hue": 1 / 3}))  # red -> green
    assert shifted[..., 1].min() == 255 and shifted[..., 0].max() == 0
    crop = augment_image(img, AugmentParams(**{**base, "crop_box": (0.5, 0.5, 1.0, 1.0)}))
    assert crop.shape == img.shape


def test_aug_config_validation():
    with pytest.raises(ValueError, match="crop_scale=1.5"):
        ImageAugConfig(crop_scale=1.5)
    with pytest.raises(ValueError, match="contrast"):
        ImageAugConfig(contrast=(1.2, 0.8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, r"split='test' is not valid; allowed: \['train', 'val', 'all'\]"),
        ({"dataset_names": ["a", "b"], "weights": [1.0]}, "one entry per dataset"),
        ({"weights": [-1.0]}, "must be >= 0"),
        ({"action_chunk": 0}, "action_chunk=0"),
        ({"horizon": -1}, "horizon=-1"),
        ({"dataset_names": []}, "at least one"),
        ({"train_percent": 0}, "train_percent=0"),
    ],
)
def test_data_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_data_config_splits_and_weights():
    cfg = DataConfig(dataset_names=["a", "b"], weights=[3.0, 1.0])
    assert cfg.tfds_split == "train[:95%]" and cfg.normalized_weights == [0.75, 0.25]
    assert (
        DataConfig(split="val").tfds_split == "train[95%:]" and DataConfig(split="all").tfds_split == "train"
    )


def test_data_config_parses_with_draccus(tmp_path):
    from stamo_vla.configs import parse_config

    cfg = parse_config(DataConfig, ["--horizon", "4", "--dataset_names", "[x, y]", "--aug.hue", "0.01"])
    assert cfg.horizon == 4 and cfg.dataset_names == ["x", "y"] and cfg.aug.hue == 0.01
