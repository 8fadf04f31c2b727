import subprocess
import sys

import pytest
import torch

from stamo_vla.stamo.configuration_stamo import tiny_config
from stamo_vla.stamo.modeling_encoder import StaMoEncoder, fingerprint


def _encoder(seed: int = 0) -> StaMoEncoder:
    torch.manual_seed(seed)
    return StaMoEncoder(tiny_config())


def test_shapes_dtypes_and_any_input_size():
    enc = _encoder()
    cfg = enc.config
    for size in (64, 48, 96):
        states = enc.encode(torch.rand(3, 3, size, size))
        assert states.shape == (3, cfg.num_state_tokens, cfg.state_dim)
        assert states.dtype == torch.float32
    feats = enc.features(torch.rand(2, 3, 64, 64))
    patches = (cfg.backbone.image_size // cfg.backbone.patch_size) ** 2
    assert feats.shape == (2, 1 + patches, enc.backbone.config.hidden_size)


def test_deterministic_in_eval_and_batch_independent():
    enc = _encoder().eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        a, b = enc.encode(x), enc.encode(x)
        single = enc.encode(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], single, atol=1e-5)


def test_backbone_stays_frozen_in_train_mode():
    enc = _encoder().train()
    assert enc.training and enc.compressor.training
    assert not enc.backbone.training and not any(m.training for m in enc.backbone.modules())
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    enc.encode(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in enc.backbone.parameters())
    assert all(p.grad is not None for p in enc.compressor.parameters())


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.zeros(2, 64, 64, 3, dtype=torch.uint8), TypeError, "For uint8 .*permute"),
        (torch.zeros(2, 64, 64, 3), ValueError, "channels-last"),
        (torch.zeros(3, 64, 64), ValueError, r"shape \(B, 3, H, W\); got \(3, 64, 64\)"),
        (torch.full((1, 3, 64, 64), 255.0), ValueError, "divide by 255"),
        (torch.full((1, 3, 64, 64), -1.0), ValueError, r"\[-1, 1\]"),
        (torch.zeros(0, 3, 64, 64), ValueError, "empty batch"),
        (torch.zeros(1, 3, 64, 64).numpy(), TypeError, "torch.Tensor"),
    ],
)
def test_bad_pixels_are_rejected(images, error, message):
    with pytest.raises(error, match=message):
        _encoder().encode(images)


def test_save_load_round_trip_and_fingerprint(tmp_path):
    enc = _encoder().eval()
    enc.save_pretrained(tmp_path / "enc")
    loaded = StaMoEncoder.from_pretrained(tmp_path / "enc").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc.encode(x), loaded.encode(x))
    assert fingerprint(enc) == fingerprint(loaded)
    other = _encoder(seed=1)
    assert fingerprint(other) != fingerprint(enc)
    with torch.no_grad():
        loaded.compressor.out_proj.bias[0] += 1e-3
    assert fingerprint(loaded) != fingerprint(enc)


def test_pretrained_backbone_is_stored_as_path_only(tmp_path):
    enc = _encoder()
    enc.backbone.save_pretrained(tmp_path / "dinov2")  # stands in for facebook/dinov2-large
    cfg = tiny_config()
    cfg.backbone.pretrained_path = str(tmp_path / "dinov2")
    from_path = StaMoEncoder(cfg)
    from_path.compressor.load_state_dict(enc.compressor.state_dict())
    from_path.save_pretrained(tmp_path / "stamo")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "stamo" / "model.safetensors")).keys()
    assert keys and all(k.startswith("encoder.compressor.") for k in keys)
    loaded = StaMoEncoder.from_pretrained(tmp_path / "stamo").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), enc.eval().encode(x))
    assert fingerprint(loaded) == fingerprint(enc)  # the path is not part of the identity, the weights are


def test_mismatched_weights_on_load_are_reported(tmp_path):
    _encoder().save_pretrained(tmp_path)
    cfg = tiny_config()
    cfg.state_dim = 32
    cfg.save(tmp_path)  # config edited after saving
    with pytest.raises(ValueError, match=r"do not match its config.json: shape mismatch .*out_proj"):
        StaMoEncoder.from_pretrained(tmp_path)


@pytest.mark.slow
def test_loading_the_encoder_never_imports_diffusers(tmp_path):
    _encoder().save_pretrained(tmp_path)
    code = (
        "import sys; from stamo_vla.stamo import StaMoEncoder;"
        f"StaMoEncoder.from_pretrained({str(tmp_path)!r});"
        "print('diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
