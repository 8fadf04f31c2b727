import math

import pytest
import torch

from stamo_vla.stamo.metrics import psnr, ssim


def test_psnr_matches_closed_form():
    a = torch.zeros(2, 3, 16, 16)
    b = torch.full_like(a, 0.1)  # mse 0.01 -> 20 dB
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0), atol=1e-4)


def test_ssim_identity_symmetry_and_degradation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert torch.allclose(ssim(x, noisy), ssim(noisy, x), atol=1e-6)
    assert (ssim(x, noisy) < 0.9).all()
    # a constant shift keeps structure but changes luminance: SSIM drops a little, less than for noise
    shifted = (x * 0.8 + 0.1).clamp(0, 1)
    assert (ssim(x, shifted) > ssim(x, noisy)).all()


def test_ssim_of_a_known_case():
    # two constant images: SSIM = (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1)
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert math.isclose(ssim(a, b).item(), expected, rel_tol=1e-4)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
