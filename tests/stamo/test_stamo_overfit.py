"""Honest learning check: overfit a handful of distinct images and decode them from their own states.

The VAE is fitted first (no pretrained VAE is available offline; a random one decodes everything to mush),
then compressor + DiT train on the fixed batch. Reconstructions from an image's own state must beat
reconstructions from another image's state, in pixels and in latents, with identical sampling noise.
"""

import pytest
import torch

from stamo_vla.data.synthetic import shapes
from stamo_vla.stamo.configuration_stamo import tiny_config
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder
from stamo_vla.training.optim import OptimizerConfig, build_optimizer
from stamo_vla.training.step import train_step
from stamo_vla.training.vae_fit import fit_vae, latent_statistics
from stamo_vla.viz.reconstruction import evaluate


@pytest.mark.slow
def test_tiny_model_overfits_and_reconstructs_from_its_own_state():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine a second thread
    # spin-waits; one thread keeps this test ~40 s instead of minutes (conftest resets it per test).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = shapes(6, 64, seed=0)
    assert all((images[i] - images[j]).abs().max() > 0.5 for i in range(6) for j in range(i + 1, 6))
    model = StaMoAutoencoder(tiny_config())
    fit_vae(model.decoder.vae, images, steps=60, batch_size=6, lr=3e-3)
    model.decoder.set_latent_scale(*latent_statistics(model.decoder.vae, images))

    opt = build_optimizer(model.trainable_parameters(), OptimizerConfig(lr=3e-3))
    losses = [train_step(model, [images], opt, max_grad_norm=1.0)["loss"] for _ in range(300)]
    start, end = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert end < 0.4 * start, (start, end)

    m = evaluate(model, images, steps=10, seed=0)
    assert m["psnr"] > m["psnr_shuffled"] + 0.5, m
    assert m["ssim"] > m["ssim_shuffled"], m
    assert m["latent_mse"] < 0.85 * m["latent_mse_shuffled"], m
    assert m["psnr_vae"] > 15, m  # the fitted VAE itself reconstructs: pixel metrics are meaningful


@pytest.mark.slow
def test_tiny_preset_decodes_own_states_closer_than_shuffled_by_a_margin():
    """The improved tiny preset (stamo_vla/presets/pretrain_stamo_tiny.yaml), a few hundred steps on 12 distinct
    images: decoding from each image's own state must beat another image's state by > 1 dB."""
    from stamo_vla.configs import parse_config
    from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

    preset = parse_config(PretrainStaMoConfig, ["--config", "tiny"], prefix="pretrain_stamo_")
    assert preset.model.state_bottleneck == "batch_norm"
    torch.manual_seed(0)
    images = shapes(12, 64, seed=1)
    model = StaMoAutoencoder(preset.model)
    fit_vae(model.decoder.vae, images, steps=150, batch_size=12, lr=3e-3)
    model.decoder.set_latent_scale(*latent_statistics(model.decoder.vae, images))
    opt = build_optimizer(model.trainable_parameters(), OptimizerConfig(lr=preset.optim.lr))
    for _ in range(300):
        train_step(
            model, [images], opt, max_grad_norm=1.0
        )  # the whole fixed set: batch statistics = population
    model.encoder.recalibrate_bottleneck(images)
    m = evaluate(model, images, steps=10, seed=0)
    assert m["psnr"] > m["psnr_shuffled"] + 1.0, m
    assert m["loss"] < m["loss_shuffled"], m
