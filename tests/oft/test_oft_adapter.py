"""The OFT variant of the adapter: config validation, loss, save/load/merge round trips, FiLM, clear input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oft_helpers import CHUNK, make_oft, oft_batch, oft_sample

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig, load_adapter, merge, save_adapter
from stamo_vla.adapter.modeling_adapter import base_model_of

INSTRUCTIONS = ["pick up the black bowl", "put the bowl on the plate"]


@pytest.fixture(scope="module")
def oft():
    model, processor = make_oft(use_film=True)
    return model, processor, oft_batch(model, processor, INSTRUCTIONS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"action_head": "diffusion"}, "action_head='diffusion' is not valid; allowed: ['tokens', 'l1']"),
        ({"action_chunk": 8}, "action_chunk=8 needs action_head='l1'"),
        ({"num_images": 2}, "num_images=2 needs action_head='l1'"),
        ({"use_proprio": True}, "use_proprio=True needs action_head='l1'"),
        ({"action_head": "l1", "num_images": 3}, "num_images=3 is not valid; allowed: [1, 2]"),
        ({"action_head": "l1", "action_chunk": 0}, "action_chunk=0 must be a positive integer"),
    ],
)
def test_config_validation_names_field_value_and_choices(overrides, message):
    """Adapter configs in the old flat form (as saved on disk before the action head was a config choice)."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        StaMoAdapterConfig.from_dict(overrides)


def test_loss_trains_the_oft_modules_lora_and_head(oft):
    model, _, batch = oft
    model.train()
    loss, metrics = model(batch)
    loss.backward()
    model.eval()
    assert {"loss_action", "action_l1", "action_l1_current", "action_l1_next", "future_mse", "loss"} <= set(
        metrics
    )
    assert metrics["loss"] == pytest.approx(metrics["loss_action"] + metrics["loss_future"], rel=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for prefix in ("oft.action_head.", "oft.proprio_projector.", "oft.film.", "head."):
        assert any(n.startswith(prefix) and g is not None and g.abs().sum() > 0 for n, g in grads.items()), (
            prefix
        )
    assert any("lora_" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    model.zero_grad(set_to_none=True)
    # the L1 is the mean |pred - actions| over the K x 7 chunk
    with torch.no_grad():
        pred = model._run(batch).actions
    assert metrics["action_l1"] == pytest.approx(float((pred - batch[K.ACTIONS]).abs().mean()), rel=1e-5)


def test_action_free_rows_carry_no_action_loss(oft):
    model, _, batch = oft
    free = {**batch, K.HAS_ACTION: torch.tensor([False, False])}
    loss, metrics = model(free)
    assert metrics["loss_action"] == 0.0 and loss.requires_grad


@pytest.mark.slow
def test_unnormalized_chunk_maps_the_normalized_one_through_the_statistics(oft):
    model, processor, batch = oft
    from stamo_vla.vla.generation import unnormalize_actions
    from stamo_vla.vla.processing_openvla import build_prompt

    enc = processor([build_prompt(t) for t in INSTRUCTIONS], [np.zeros((224, 224, 3), np.uint8)] * 2)
    args = (batch[K.PIXEL_VALUES], enc["input_ids"], enc["attention_mask"])
    normalized = model.predict_action(*args, proprio=batch[K.PROPRIO], unnormalize=False)
    actions, future = model.predict_action(*args, proprio=batch[K.PROPRIO], return_future_state=True)
    stats = base_model_of(model.vla).norm_stats["tiny_dataset"]["action"]
    np.testing.assert_allclose(actions, unnormalize_actions(normalized, stats, eps=1e-8))  # OFT adds 1e-8
    assert actions.shape == (2, CHUNK, 7) and future.shape == (2, 2, 8)


def _predict(model, batch):
    with torch.no_grad():
        out = model._run(batch)
        return out.actions, model.head(out.readout_hidden)


def test_save_load_and_merge_round_trips(oft, tmp_path):
    from stamo_vla.vla import OpenVLAForActionPrediction, build_tiny

    model, processor, batch = oft
    actions, states = _predict(model, batch)
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "oft_modules.safetensors").is_file()
    fresh, _ = build_tiny(seed=0)
    loaded = load_adapter(fresh, tmp_path / "adapter").eval()
    assert type(loaded).__name__ == "StaMoOFTAdapterModel" and loaded.config.action_head.use_film
    a2, s2 = _predict(loaded, batch)
    torch.testing.assert_close(a2, actions)
    torch.testing.assert_close(s2, states)

    merge(loaded, tmp_path / "merged", processor=processor)
    merged = OpenVLAForActionPrediction.from_pretrained(tmp_path / "merged")
    from_merged = load_adapter(merged, tmp_path / "merged").eval()
    a3, s3 = _predict(from_merged, batch)
    torch.testing.assert_close(a3, actions, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s3, states, atol=1e-5, rtol=1e-4)


def test_an_oft_adapter_saved_with_the_old_flat_config_loads_and_computes_the_same(oft, tmp_path):
    import json

    from stamo_vla.vla import build_tiny

    model, _, batch = oft
    save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "stamo_adapter_config.json"
    data = json.loads(path.read_text())
    head = data.pop("action_head")
    assert head.pop("type") == "l1"
    head["action_head_width"] = head.pop("width")
    path.write_text(
        json.dumps({**data, **head, "action_head": "l1", "stamo_path": None})
    )  # as written before
    loaded = load_adapter(build_tiny(seed=0)[0], tmp_path / "adapter").eval()
    assert loaded.config == model.config
    actions, states = _predict(model, batch)
    a2, s2 = _predict(loaded, batch)
    torch.testing.assert_close(a2, actions)
    torch.testing.assert_close(s2, states)


def test_missing_oft_weights_are_reported(oft, tmp_path):
    from stamo_vla.vla import build_tiny

    model, _, _ = oft
    save_adapter(model, tmp_path / "adapter")
    (tmp_path / "adapter" / "oft_modules.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="action_head='l1' but no oft_modules.safetensors"):
        load_adapter(build_tiny(seed=0)[0], tmp_path / "adapter")


def test_film_is_randomly_initialized_as_upstream_and_zero_projections_are_identity():
    from stamo_vla.vla.oft_modules import VisionFiLM

    torch.manual_seed(0)
    base = base_model_of(make_oft()[0].vla)
    fresh = VisionFiLM([base.vision_backbone.featurizer], 32)
    for layer in [*fresh.scales, *fresh.shifts]:  # torch's nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 32**-0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > bound / 2
        assert torch.count_nonzero(layer.bias) == layer.bias.numel()

    model, _ = make_oft(use_film=True)
    base = base_model_of(model.vla)
    model.oft.film.set_condition(torch.randn(1, 32))
    pixels = torch.rand(1, 6, 224, 224)
    with torch.no_grad():
        filmed = base.vision_backbone(pixels)  # LoRA off the path: compare the featurizers alone
        for p in [*model.oft.film.scales.parameters(), *model.oft.film.shifts.parameters()]:
            p.zero_()
        zero = base.vision_backbone(pixels)
        model.oft.film.set_condition(None)
        off = base.vision_backbone(pixels)
    model.oft.film.set_condition(None)
    torch.testing.assert_close(zero, off)
    assert not torch.allclose(filmed, off, atol=1e-5)


def test_film_averages_the_language_embedding_over_upstreams_positions():
    model, processor = make_oft(use_film=True, num_images=1)
    base = base_model_of(model.vla)
    batch = oft_batch(model, processor, ["pick it", "open the top drawer of the cabinet"])
    seen = []
    original = model.oft.film.set_condition
    model.oft.film.set_condition = lambda language: (seen.append(language), original(language))
    with torch.no_grad():
        model._run(batch)
    text = base.get_input_embeddings()(batch[K.INPUT_IDS])
    index = torch.arange(text.shape[1])[None]
    actions = (index >= batch[K.PROMPT_LENGTH][:, None]) & (
        index < batch[K.PROMPT_LENGTH][:, None] + CHUNK * 7
    )
    # upstream training: `input_embeddings[~all_actions_mask].reshape(B, -1, D).mean(1)`: every non-action text
    # position of the padded batch (BOS, prompt, "▁", EOS and padding)
    expected = text[~actions].reshape(2, -1, text.shape[-1]).mean(1)
    torch.testing.assert_close(seen[0], expected)


def test_bad_inputs_give_clear_errors(oft):
    from stamo_vla.adapter.oft_policy import OFTPolicy
    from stamo_vla.vla import ActionTokenizer
    from stamo_vla.vla.oft_batch_transform import OFTBatchTransform

    model, processor, batch = oft
    one_image = {**batch, K.PIXEL_VALUES: batch[K.PIXEL_VALUES][:, :6]}
    with pytest.raises(ValueError, match=r"expected \(2, 12, 224, 224\).*third-person and the wrist image"):
        model(one_image)
    with pytest.raises(ValueError, match=r"proprio: got \(2, 7\), expected shape \(2, 8\)"):
        model({**batch, K.PROPRIO: batch[K.PROPRIO][:, :7]})
    policy = OFTPolicy(model, processor)
    image = np.zeros((224, 224, 3), np.uint8)
    with pytest.raises(ValueError, match="takes two images .* no wrist_images"):
        policy.predict_batch([image], ["pick"], proprio=np.zeros((1, 8)))
    with pytest.raises(ValueError, match=r"proprio has shape \(1, 9\), expected \(B, 8\)"):
        policy.predict_batch([image], ["pick"], wrist_images=[image], proprio=np.zeros((1, 9)))
    with pytest.raises(ValueError, match=r"wrist_images\[0\] has shape \(256, 256, 3\)"):
        policy.predict_batch([image], ["pick"], wrist_images=[np.zeros((256, 256, 3), np.uint8)])
    transform = OFTBatchTransform(processor, ActionTokenizer(512), CHUNK, num_images=2, use_proprio=True)
    sample = oft_sample(np.random.default_rng(0))
    with pytest.raises(KeyError, match=r"lacks \['wrist_image'\].*data.load_wrist"):
        transform({k: v for k, v in sample.items() if k != K.WRIST_IMAGE})
    with pytest.raises(ValueError, match="ACTION has 1 steps but action_chunk=4"):
        transform({**sample, K.ACTION: sample[K.ACTION][:1]})


def test_the_token_variant_is_unchanged(tmp_path):
    from stamo_vla.adapter import attach
    from stamo_vla.vla import build_tiny

    base, _ = build_tiny(seed=0)
    model = attach(base, StaMoAdapterConfig(target="none", lora_rank=2))
    assert type(model).__name__ == "StaMoAdapterModel" and not hasattr(model, "oft")
    save_adapter(model, tmp_path / "tokens")
    assert not (tmp_path / "tokens" / "oft_modules.safetensors").exists()
