import pytest
import torch

from stamo_vla.stamo.configuration_stamo import tiny_config
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder
from stamo_vla.stamo.modeling_encoder import StaMoEncoder
from stamo_vla.training.optim import OptimizerConfig, build_optimizer


@pytest.fixture(scope="module")
def model() -> StaMoAutoencoder:
    torch.manual_seed(0)
    return StaMoAutoencoder(tiny_config())


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_dtypes_at_every_boundary(model):
    cfg = model.config
    x = _images(2)
    states = model.encode(x)
    assert states.shape == (2, cfg.num_state_tokens, cfg.state_dim) and states.dtype == torch.float32
    latents = model.decoder.images_to_latents(x)
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    v = model.decoder.velocity(latents, torch.full((2,), 0.5), states)
    assert v.shape == latents.shape
    images = model.decode(states, steps=2)
    assert images.shape == (2, 3, cfg.image_size, cfg.image_size) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    loss, metrics = model.loss(x)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and {"loss_flow", "sigma_mean"} <= metrics.keys()
    # other input sizes are resized to config.image_size
    assert model.loss(torch.rand(2, 3, 80, 80))[0].ndim == 0


def test_bad_states_are_rejected(model):
    with pytest.raises(ValueError, match=r"states must have shape \(B, 2, 64\); got \(2, 64\)"):
        model.decode(torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model.loss(torch.full((1, 3, 64, 64), 2.0))


def test_only_compressor_dit_and_projections_train_and_frozen_parts_stay_bit_identical():
    torch.manual_seed(0)
    m = StaMoAutoencoder(tiny_config())
    frozen_names = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen_names == {
        n for n, _ in m.named_parameters() if n.startswith(("encoder.backbone.", "decoder.vae."))
    }
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters() if n in frozen_names}
    trainable_before = {n: p.detach().clone() for n, p in m.named_parameters() if n not in frozen_names}
    opt = build_optimizer(m.trainable_parameters(), OptimizerConfig(lr=1e-3, weight_decay=0.1))
    m.train()
    assert not m.encoder.backbone.training and not m.decoder.vae.training
    for _ in range(3):
        loss, _ = m(_images(4))
        loss.backward()
        assert all(p.grad is None for n, p in m.named_parameters() if n in frozen_names)
        assert all(p.grad is not None for n, p in m.named_parameters() if n not in frozen_names)
        opt.step()
        opt.zero_grad()
    for n, p in m.named_parameters():
        if n in frozen_names:
            assert torch.equal(p, frozen_before[n]), n
    changed = {
        n.split(".")[1]
        for n, p in m.named_parameters()
        if n not in frozen_names and not torch.equal(p, trainable_before[n])
    }
    assert changed == {"compressor", "transformer", "context_proj", "context_pos", "pooled_proj"}


def test_save_load_reproduces_encode_loss_and_decode_exactly(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = StaMoAutoencoder.from_pretrained(tmp_path)
    model.eval(), loaded.eval()
    x = _images(3)
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        a = model.loss(x, generator=torch.Generator().manual_seed(7))[0]
        b = loaded.loss(x, generator=torch.Generator().manual_seed(7))[0]
        assert torch.equal(a, b)
        c = model.loss(x, generator=torch.Generator().manual_seed(8))[0]
        assert not torch.equal(a, c)  # the generator really drives noise and sigma
        s = model.encode(x)
        assert torch.equal(
            model.decode(s, steps=2, generator=torch.Generator().manual_seed(1)),
            loaded.decode(s, steps=2, generator=torch.Generator().manual_seed(1)),
        )
    # the encoder alone loads from the autoencoder directory
    enc = StaMoEncoder.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(enc.encode(x), model.encode(x))


def test_latent_scale_is_saved_with_the_config(tmp_path):
    m = StaMoAutoencoder(tiny_config())
    m.decoder.set_latent_scale(2.5, -0.25)
    m.save_pretrained(tmp_path)
    loaded = StaMoAutoencoder.from_pretrained(tmp_path)
    assert (loaded.decoder.scaling_factor, loaded.decoder.shift_factor) == (2.5, -0.25)


def test_pretrained_vae_is_stored_as_path_only(model, tmp_path):
    model.decoder.vae.save_pretrained(tmp_path / "vae")  # stands in for <sd3-medium>/vae
    cfg = tiny_config()
    cfg.decoder.vae.pretrained_path = str(tmp_path / "vae")
    m = StaMoAutoencoder(cfg)
    m.save_pretrained(tmp_path / "stamo")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "stamo" / "model.safetensors")).keys()
    assert not any(k.startswith("decoder.vae.") for k in keys)
    assert any(k.startswith("decoder.transformer.") for k in keys)  # fine-tuned, so always saved
    loaded = StaMoAutoencoder.from_pretrained(tmp_path / "stamo")
    for a, b in zip(loaded.decoder.vae.state_dict().values(), model.decoder.vae.state_dict().values()):
        assert torch.equal(a, b)


def test_load_errors_are_clear(model, tmp_path):
    StaMoEncoder(tiny_config()).save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="encoder only .* StaMoEncoder.from_pretrained"):
        StaMoAutoencoder.from_pretrained(tmp_path / "enc")
    model.save_pretrained(tmp_path / "ae")
    cfg = tiny_config()
    cfg.decoder.transformer.num_layers = 3
    cfg.save(tmp_path / "ae")
    with pytest.raises(ValueError, match=r"do not match its config.json: missing \d+ .*transformer_blocks"):
        StaMoAutoencoder.from_pretrained(tmp_path / "ae")
    with pytest.raises(FileNotFoundError, match="decoder.vae.pretrained_path='/nonexistent/vae'"):
        cfg = tiny_config()
        cfg.decoder.vae.pretrained_path = "/nonexistent/vae"
        StaMoAutoencoder(cfg)


def test_frozen_parts_in_bfloat16_keep_float32_boundaries():
    cfg = tiny_config()
    cfg.backbone.dtype = "bfloat16"
    cfg.decoder.vae.dtype = "bfloat16"
    m = StaMoAutoencoder(cfg)
    assert next(m.encoder.backbone.parameters()).dtype == torch.bfloat16
    assert next(m.decoder.vae.parameters()).dtype == torch.bfloat16
    # trainable parts keep float32 master weights
    assert next(m.decoder.transformer.parameters()).dtype == torch.float32
    x = _images(2)
    assert m.encode(x).dtype == torch.float32
    assert m.decoder.images_to_latents(x).dtype == torch.float32
    loss, _ = m.loss(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_shared_noise_makes_decodes_depend_on_states_only(model):
    states = model.encode(_images(2))
    noise = torch.randn(model.decoder.latent_shape(1)).expand(3, -1, -1, -1)
    same = torch.stack([states[0]] * 3)
    lat = model.decoder.sample_latents(same, steps=2, noise=noise)
    assert torch.allclose(lat[0], lat[1], atol=1e-5) and torch.allclose(lat[0], lat[2], atol=1e-5)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 4, 16, 16\)"):
        model.decoder.sample_latents(same, steps=2, noise=noise[:2])
