"""Auxiliary targets as adapter choices: their encoders, seed-paired initialization, target standardization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, save_adapter
from stamo_vla.adapter.action_heads import L1ActionHead
from stamo_vla.adapter.attach import HEAD_WEIGHTS
from stamo_vla.adapter.configuration_adapter import CONFIG_NAME
from stamo_vla.adapter.heads import StateHead, future_loss
from stamo_vla.adapter.target_encoders import (
    FeatureTargetEncoder,
    UntrainedStaMoEncoder,
    build_target_encoder,
)
from stamo_vla.data.target_cache import target_facts


def _stamo_encoder(seed: int = 0):
    from stamo_vla.stamo import StaMoEncoder, tiny_config

    torch.manual_seed(seed)
    return StaMoEncoder(tiny_config()).eval()


SHAPE = (2, 8)  # (num_state_tokens, state_dim) of a head attached without an encoder


def _cfg(target: str, **kw) -> StaMoAdapterConfig:
    return StaMoAdapterConfig(**{**dict(target=target, head_width=16, lora_rank=4), **kw})


def _prompt(processor, seed: int = 0):
    from stamo_vla.vla.processing_openvla import build_prompt

    image = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    enc = processor([build_prompt("pick up the bowl")] * 2, [image, image[::-1].copy()])
    return enc["pixel_values"], enc["input_ids"], enc["attention_mask"]


def test_every_target_is_a_registered_choice_with_checked_fields():
    from stamo_vla.adapter.targets import get_target, target_names

    assert target_names() == ("state", "motion", "features", "untrained", "none")
    assert get_target("motion").difference and not get_target("untrained").difference
    assert not _cfg("none").has_head and _cfg("features").has_head
    with pytest.raises(
        ValueError, match="lambda_decoder > 0 decodes predicted StaMo states; target='features'"
    ):
        _cfg("features", lambda_decoder=1.0)
    with pytest.raises(
        ValueError, match=r"target_norm='zscore' is not valid; allowed: \['dataset', 'none'\]"
    ):
        _cfg("state", target_norm="zscore")
    with pytest.raises(ValueError, match="feature_grid"):
        _cfg("features", feature_grid=0)
    with pytest.raises(ValueError, match="target_seed=-1"):
        _cfg("untrained", target_seed=-1)


def test_old_adapter_configs_load_with_the_new_fields_at_their_defaults():
    data = _cfg("motion").to_dict()
    for name in ("target_norm", "target_seed", "feature_grid"):
        data.pop(name)
    loaded = StaMoAdapterConfig.from_dict(data)
    assert loaded == _cfg("motion") and loaded.target_norm == "dataset"


@pytest.mark.slow
def test_untrained_encoder_is_seeded_has_the_trained_shapes_and_leaves_the_global_rng_alone():
    trained = _stamo_encoder()
    state = torch.get_rng_state()
    a, b, other = (UntrainedStaMoEncoder(trained, seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    pixels = torch.rand(3, 3, 64, 64)
    out = a.encode(pixels)
    assert out.shape == trained.encode(pixels).shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, b.encode(pixels), rtol=0, atol=0)
    assert not torch.allclose(out, other.encode(pixels))
    assert not torch.allclose(out, trained.encode(pixels))
    facts = target_facts(a)
    assert (
        facts == target_facts(b) and facts["target_seed"] == 0 and facts["target_kind"] == "untrained_stamo"
    )
    assert facts["encoder_fingerprint"] != target_facts(other)["encoder_fingerprint"]
    assert (facts["num_state_tokens"], facts["state_dim"]) == (out.shape[1], out.shape[2])


def test_feature_target_is_the_policy_backbone_pooled_to_its_grid():
    from stamo_vla.vla import build_tiny

    base, processor = build_tiny(seed=0)
    encoder = build_target_encoder(_cfg("features", feature_grid=2), base=base, processor=processor)
    assert isinstance(encoder, FeatureTargetEncoder)
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    got = encoder.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
    with torch.no_grad():
        patches = base.vision_backbone(processor.image_processor(image)["pixel_values"])
    side = encoder.side
    grid = patches.transpose(1, 2).reshape(1, -1, side, side)
    expected = torch.nn.functional.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    assert got.shape == (1, 4, base.vision_backbone.embed_dim)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # a base loaded in bfloat16 (GPU training) has the fingerprint of the float32 base the cache was made from
    half = build_target_encoder(
        _cfg("features"), base=build_tiny(seed=0)[0].to(torch.bfloat16), processor=processor
    )
    assert target_facts(half)["encoder_fingerprint"] == target_facts(encoder)["encoder_fingerprint"]
    with torch.no_grad():  # a copy: LoRA or training on the base never moves the target
        next(base.vision_backbone.parameters()).add_(1.0)
    torch.testing.assert_close(encoder.encode(torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0), got)
    with pytest.raises(ValueError, match="needs the base policy"):
        build_target_encoder(_cfg("features"))
    with pytest.raises(ValueError, match="needs a trained StaMo encoder"):
        build_target_encoder(_cfg("untrained"))


def _lora_and_heads(model) -> dict[str, torch.Tensor]:
    weights = {n: p.detach().clone() for n, p in model.vla.named_parameters() if "lora_" in n}
    weights.update({f"oft.{n}": p.detach().clone() for n, p in model.oft.state_dict().items()})
    return weights


@pytest.mark.slow
def test_same_seed_gives_every_arm_the_same_lora_and_action_head_weights():
    from stamo_vla.vla import build_tiny

    l1 = L1ActionHead(action_chunk=2)
    arms = {}
    for target in ("none", "state", "untrained", "features"):
        base, processor = build_tiny(seed=0)
        torch.manual_seed(123)
        encoder = None
        if target != "none":  # loading a target encoder draws from the global RNG first
            trained = _stamo_encoder(5)
            encoder = build_target_encoder(_cfg(target), trained, base, processor)
        arms[target] = attach(base, _cfg(target, action_head=l1), stamo_encoder=encoder, seed=3)
    ref = _lora_and_heads(arms["none"])
    assert any("lora_A" in n for n in ref) and any(n.startswith("oft.") for n in ref)
    for target, model in arms.items():
        weights = _lora_and_heads(model)
        assert weights.keys() == ref.keys()
        for name, value in ref.items():
            assert torch.equal(weights[name], value), (target, name)
    # the target heads agree wherever their shapes do (state and untrained: both 2 x 8 tokens)
    for a, b in zip(arms["state"].head.state_dict().values(), arms["untrained"].head.state_dict().values()):
        assert torch.equal(a, b)
    # without a seed, what was loaded before shifts the LoRA draw: the pairing above is not by chance
    base, _ = build_tiny(seed=0)
    torch.manual_seed(123)
    _stamo_encoder(5)
    unpaired = attach(base, _cfg("state", action_head=l1), target_shape=SHAPE)
    lora_a = next(n for n in ref if "lora_A" in n)
    assert not torch.equal(_lora_and_heads(unpaired)[lora_a], ref[lora_a])


def test_standardization_round_trip_and_the_loss_sees_standardized_targets():
    head = StateHead(8, 2, 4, depth=2, width=16)
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=(2, 4)), rng.uniform(0.5, 3, (2, 4))
    head.set_target_statistics(mean, std)
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(head.unstandardize(head.standardize(x)), x)
    torch.testing.assert_close(head.standardize(torch.tensor(mean, dtype=torch.float32)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"target std has shape \(4,\); the head predicts \(2, 4\)"):
        head.set_target_statistics(mean, np.ones(4))
    with pytest.raises(ValueError, match="target mean holds non-finite values"):
        head.set_target_statistics(np.full((2, 4), np.nan), std)
    head.set_target_statistics(mean, np.zeros((2, 4)))  # a constant dimension never divides by zero
    assert torch.isfinite(head.standardize(x)).all()

    from stamo_vla.vla import build_tiny

    base, _ = build_tiny(seed=0)
    model = attach(base, _cfg("state"), seed=0, target_shape=SHAPE)
    model.head.set_target_statistics(rng.normal(size=(2, 8)), rng.uniform(0.5, 3, (2, 8)))
    readout = torch.randn(3, model.head.mlp[0].normalized_shape[0])
    target = torch.randn(3, 2, 8)
    metrics: dict = {}
    loss = model.future_terms(readout, {K.FUTURE_STATE: target}, metrics)
    stats_mean, stats_std = model.head.target_mean, model.head.target_std
    expected, _ = future_loss(model.head(readout), (target - stats_mean) / stats_std)
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_head_statistics_are_saved_loaded_and_absent_ones_mean_raw_targets(tmp_path):
    from stamo_vla.vla import build_tiny

    base, processor = build_tiny(seed=0)
    model = attach(base, _cfg("motion"), seed=0, target_shape=SHAPE).eval()
    rng = np.random.default_rng(1)
    model.head.set_target_statistics(rng.normal(size=(2, 8)), rng.uniform(0.5, 2, (2, 8)))
    save_adapter(model, tmp_path / "a", dataset_statistics=base.norm_stats)
    args = _prompt(processor)
    current = torch.randn(2, 2, 8)
    _, expected = model.predict_action(*args, return_future_state=True, current_state=current)
    loaded = load_adapter(build_tiny(seed=0)[0], tmp_path / "a").eval()
    _, got = loaded.predict_action(*args, return_future_state=True, current_state=current)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loaded.head.target_std, model.head.target_std)

    # an adapter saved before standardization: its head file has no statistics and predicts raw targets
    state = {k: v for k, v in load_file(str(tmp_path / "a" / HEAD_WEIGHTS)).items() if "target_" not in k}
    save_file(state, str(tmp_path / "a" / HEAD_WEIGHTS))
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    for name in ("target_norm", "target_seed", "feature_grid"):
        config.pop(name)
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(config))
    old = load_adapter(build_tiny(seed=0)[0], tmp_path / "a").eval()
    assert torch.equal(old.head.target_mean, torch.zeros(2, 8)) and torch.equal(
        old.head.target_std, torch.ones(2, 8)
    )
    _, hidden = old.vla.get_base_model().predict_action(*args, return_hidden=True)
    _, raw = old.predict_action(*args, return_future_state=True, current_state=current)
    torch.testing.assert_close(raw, current + old.head(hidden.float()))
