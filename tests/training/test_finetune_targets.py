"""Every auxiliary target end to end at tiny size: cache it, train 2 steps from the cache, save, load, predict;
a cache of another target is refused; arms with the same seed see the same first batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_finetune import DATASET, tiny_cfg

from stamo_vla import keys as K
from stamo_vla.adapter.cache_targets import main_cache_targets
from stamo_vla.data.target_cache import StaleTargetCacheError, read_manifest, target_statistics
from stamo_vla.training.finetune import build_dataloader, finetune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny base policy every arm fine-tunes (finetune builds the same one for vla_path=tiny, seed 7)."""
    from stamo_vla.vla import build_tiny

    path = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny(save_dir=path, seed=7)
    return path


@pytest.fixture(scope="module")
def state_cache(tmp_path_factory, toy_data_root, tiny_stamo_dir):
    return _cache(
        tmp_path_factory.mktemp("state"), toy_data_root, "state", "--stamo_path", str(tiny_stamo_dir)
    )


def _cache(tmp_path, data_root, target: str, *source: str):
    root = tmp_path / f"cache_{target}"
    argv = ["--data_root_dir", str(data_root), "--dataset_name", DATASET, "--target", target]
    assert main_cache_targets([*argv, *source, "--output_dir", str(root / DATASET), "--device", "cpu"]) == 0
    return root


def _train(tmp_path, data_root, base_dir, target, cache_root, *extra):
    cfg = tiny_cfg(
        tmp_path,
        data_root,
        "--vla_path",
        str(base_dir),
        "--adapter.target",
        target,
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--data.use_target_cache",
        "true",
        "--data.target_cache_root",
        str(cache_root),
        *extra,
    )
    return cfg, finetune(cfg)


@pytest.mark.parametrize("target", ["features", "untrained"])
def test_target_caches_trains_saves_loads_and_predicts(
    tmp_path, toy_data_root, tiny_stamo_dir, base_dir, target
):
    from stamo_vla.adapter import load_adapter
    from stamo_vla.adapter.attach import target_shape_of
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor
    from stamo_vla.vla.processing_openvla import build_prompt

    source = ("--vla_path", str(base_dir)) if target == "features" else ("--stamo_path", str(tiny_stamo_dir))
    cache_root = _cache(tmp_path, toy_data_root, target, *source)
    manifest = read_manifest(cache_root / DATASET)
    assert (
        manifest["target_kind"] == {"features": "backbone_features", "untrained": "untrained_stamo"}[target]
    )
    # with stamo_path the run rebuilds the untrained encoder from its seed: its fingerprint must match the cache's
    extra = ("--stamo_path", str(tiny_stamo_dir)) if target == "untrained" else ()
    cfg, result = _train(tmp_path, toy_data_root, base_dir, target, cache_root, *extra)
    assert result.step == 2 and np.isfinite(result.last_metrics["loss_future"])

    base = OpenVLAForActionPrediction.from_pretrained(base_dir)
    adapter = load_adapter(base, result.adapter_dir).eval()
    shape = (manifest["num_state_tokens"], manifest["state_dim"])
    assert adapter.config.target == target and target_shape_of(adapter) == shape
    assert adapter.provenance.stamo_fingerprint == manifest["encoder_fingerprint"]
    stats = target_statistics([cache_root / DATASET], cfg.adapter.horizon, difference=False)
    torch.testing.assert_close(adapter.head.target_mean, torch.from_numpy(stats["mean"]))
    torch.testing.assert_close(adapter.head.target_std, torch.from_numpy(stats["std"]))

    processor = OpenVLAProcessor.from_pretrained(base_dir)
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    enc = processor([build_prompt("push the red block left")], [image])
    args = (enc["pixel_values"], enc["input_ids"], enc["attention_mask"])
    actions, future = adapter.predict_action(*args, return_future_state=True)
    assert actions.shape == (1, 7) and future.shape == (1, *shape) and torch.isfinite(future).all()
    _, hidden = adapter.vla.get_base_model().predict_action(*args, return_hidden=True)
    torch.testing.assert_close(
        future, adapter.head(hidden.float()) * adapter.head.target_std + adapter.head.target_mean
    )


def test_a_cache_of_another_target_is_refused(tmp_path, toy_data_root, tiny_stamo_dir, base_dir):
    cache_root = _cache(tmp_path, toy_data_root, "state", "--stamo_path", str(tiny_stamo_dir))
    for target in ("features", "untrained"):
        with pytest.raises(
            StaleTargetCacheError, match=f"holds 'stamo' frames, but adapter.target='{target}'"
        ):
            _train(tmp_path / target, toy_data_root, base_dir, target, cache_root)


def test_arms_with_the_same_seed_see_the_same_first_batches(
    tmp_path, toy_data_root, tiny_stamo_dir, base_dir
):
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    cache_root = _cache(tmp_path, toy_data_root, "state", "--stamo_path", str(tiny_stamo_dir))
    base = OpenVLAForActionPrediction.from_pretrained(base_dir)
    processor = OpenVLAProcessor.from_pretrained(base_dir)
    firsts = {}
    for target in ("none", "state"):
        cached = ("--data.use_target_cache", "true", "--data.target_cache_root", str(cache_root))
        cfg = tiny_cfg(
            tmp_path / target,
            toy_data_root,
            "--adapter.target",
            target,
            *(cached if target != "none" else ()),
        )
        _, loader = build_dataloader(cfg, base, processor, False, 0, 1)
        batches = iter(loader)
        firsts[target] = [next(batches) for _ in range(3)]
    for a, b in zip(firsts["none"], firsts["state"]):
        for key in (K.PIXEL_VALUES, K.INPUT_IDS, K.LABELS, K.ATTENTION_MASK):
            assert torch.equal(a[key], b[key]), key
        assert K.FUTURE_STATE in b and K.FUTURE_STATE not in a


def test_features_target_trains_on_the_fly_without_stamo(tmp_path, toy_data_root, base_dir):
    """No StaMo checkpoint and no cache: the copied backbone computes the targets, and their statistics come
    from the first batches."""
    from stamo_vla.adapter import load_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    cfg = tiny_cfg(
        tmp_path,
        toy_data_root,
        "--vla_path",
        str(base_dir),
        "--adapter.target",
        "features",
        "--max_steps",
        "2",
    )
    result = finetune(cfg)
    assert np.isfinite(result.last_metrics["loss_future"])
    adapter = load_adapter(OpenVLAForActionPrediction.from_pretrained(base_dir), result.adapter_dir)
    std = adapter.head.target_std
    assert torch.isfinite(std).all() and not torch.equal(std, torch.ones_like(std))
    assert torch.isfinite(adapter.head.target_mean).all() and adapter.head.target_mean.abs().sum() > 0
