"""The state bottleneck is part of the encoder: saved, loaded and applied identically by the encoder itself,
the target cache and the adapter's on-the-fly targets (issue 12)."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from stamo_vla.stamo import StaMoEncoder, tiny_config
from stamo_vla.stamo.modeling_encoder import StateBottleneck, sincos_2d


def bottleneck_config():
    cfg = tiny_config()
    cfg.state_bottleneck = "batch_norm"
    cfg.compressor.position_features = "sincos_2d"
    cfg.compressor.num_layers = 2
    return cfg


def trained_encoder(seed=0):
    """An encoder whose running statistics moved away from (0, 1): a few batches in train mode."""
    torch.manual_seed(seed)
    enc = StaMoEncoder(bottleneck_config())
    enc.train()
    with torch.no_grad():
        for _ in range(5):
            enc(torch.rand(6, 3, 64, 64))
    return enc.eval()


def test_batch_norm_bottleneck_standardizes_in_training_and_uses_running_stats_at_eval():
    b = StateBottleneck("batch_norm", 2, 4, momentum=0.5)
    x = torch.randn(16, 2, 4) * 3 + 7
    y = b.train()(x)
    assert torch.allclose(y.flatten(1).mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(y.flatten(1).std(0, unbiased=False), torch.ones(8), atol=1e-3)
    assert not any(p.requires_grad for p in b.parameters())  # parameter-free: no affine
    b.eval()
    single = b(x[:1])  # eval: one image is fine and does not depend on the batch
    assert torch.equal(single, b(x[:3])[:1])
    with pytest.raises(ValueError, match="needs at least 2 images"):
        b.train()(x[:1])
    assert torch.equal(StateBottleneck("none", 2, 4)(x), x)


def test_recalibration_sets_exact_statistics_for_eval():
    enc = trained_encoder()
    pixels = torch.rand(20, 3, 64, 64)
    enc.recalibrate_bottleneck(pixels, batch_size=7)
    with torch.no_grad():
        tokens = enc.encode(pixels).flatten(1)
    assert tokens.mean(0).abs().max() < 1e-4
    # unit variance up to batch norm's eps (1e-5 against small raw variances)
    torch.testing.assert_close(tokens.var(0), torch.ones(tokens.shape[1]), atol=0.02, rtol=0)


def test_position_features_are_fixed_and_distinct_per_patch():
    pos = sincos_2d(1 + 16, 64)
    assert pos.shape == (1, 17, 64) and torch.equal(pos[0, 0], torch.zeros(64))
    assert torch.cdist(pos[0, 1:], pos[0, 1:]).fill_diagonal_(1.0).min() > 0.1
    with pytest.raises(ValueError, match="square patch grid"):
        sincos_2d(1 + 15, 64)


def test_bottleneck_is_saved_and_loaded_with_the_encoder(tmp_path):
    enc = trained_encoder()
    stats = enc.bottleneck.norm.running_mean.clone()
    assert stats.abs().max() > 1e-3  # the statistics being checked are not the defaults
    enc.save_pretrained(tmp_path / "enc")
    with safe_open(str(tmp_path / "enc" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("encoder.bottleneck.norm.running_mean"), stats)
    loaded = StaMoEncoder.from_pretrained(tmp_path / "enc")
    assert not loaded.training  # a loaded encoder applies the saved statistics, not a batch's
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), enc.encode(x))
        torch.testing.assert_close(loaded.encode(x[:1]), enc.encode(x)[:1], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_encoder_target_cache_and_adapter_see_the_same_tokens(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from stamo_vla import keys as K
    from stamo_vla.adapter import StaMoAdapterConfig, attach
    from stamo_vla.data import rlds
    from stamo_vla.data.rlds_writer import write_rlds_dataset
    from stamo_vla.data.target_cache import TargetCache, _frames_to_pixels, build_target_cache
    from stamo_vla.stamo import fingerprint

    enc = trained_encoder()
    enc.save_pretrained(tmp_path / "enc")
    loaded = StaMoEncoder.from_pretrained(tmp_path / "enc")
    assert fingerprint(loaded) == fingerprint(enc)

    rng = np.random.default_rng(0)
    episodes = [
        {
            "image": rng.integers(0, 255, (5, 256, 256, 3), dtype=np.uint8),
            "wrist_image": np.zeros((5, 256, 256, 3), np.uint8),
            "state": np.zeros((5, 8), np.float32),
            "joint_state": np.zeros((5, 7), np.float32),
            "action": np.zeros((5, 7), np.float32),
            "language_instruction": "x",
            "file_path": f"/e/{i}",
        }
        for i in range(2)
    ]
    write_rlds_dataset(iter(episodes), tmp_path / "data", "toy")
    out = build_target_cache(tmp_path / "data", "toy", loaded, tmp_path / "cache")
    cache = TargetCache.open(out, tmp_path / "data", "toy", encoder_fingerprint=fingerprint(enc))

    torch.manual_seed(0)
    vla = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                patch_size=8,
            ),
            text_config=LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=608,
            ),
            image_token_id=600,
        )
    ).eval()  # fmt: skip
    vla.action_vocab_size = 600
    adapted = attach(
        vla,
        StaMoAdapterConfig(target="motion", head_width=16, lora_rank=4, lora_target_modules="all-linear"),
        stamo_encoder=StaMoEncoder.from_pretrained(tmp_path / "enc"),
    )
    adapted.train()  # the VLA trains; the frozen encoder must still apply its saved statistics
    for ep in rlds.iter_episodes(tmp_path / "data", "toy", decode_images=False):
        pixels = _frames_to_pixels(ep["image"])  # the very pixels the cache encoded (same JPEG decoder)
        with torch.no_grad():
            direct = enc.encode(pixels)
        cached = torch.from_numpy(cache.load_episode(ep))
        torch.testing.assert_close(cached, direct, atol=1e-5, rtol=0)
        motion = adapted.targets({K.STAMO_PIXELS: pixels[:1], K.FUTURE_STAMO_PIXELS: pixels[3:4]})
        torch.testing.assert_close(motion, direct[3:4] - direct[:1], atol=1e-5, rtol=0)
        motion_cached = adapted.targets({K.STATE: cached[:1], K.FUTURE_STATE: cached[3:4]})
        torch.testing.assert_close(motion_cached, motion, atol=1e-5, rtol=0)
