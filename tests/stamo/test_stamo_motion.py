import pytest
import torch

from stamo_vla.stamo.motion import interpolate, motion, transfer


def test_motion_is_difference_and_transfer_applies_it():
    a, b, c = torch.randn(3, 2, 2, 8).unbind(0)
    assert torch.equal(motion(a, b), b - a)
    assert torch.allclose(transfer(a, b, c), c + b - a)
    assert torch.allclose(transfer(a, b, a), b)  # applying a motion to its own start reaches its end


def test_interpolate_endpoints_and_linearity():
    a, b = torch.randn(2, 4, 2, 8).unbind(0)
    path = interpolate(a, b, 5)
    assert path.shape == (5, 4, 2, 8)
    assert torch.equal(path[0], a) and torch.allclose(path[-1], b)
    steps = path[1:] - path[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)  # equal spacing


def test_bad_shapes_and_counts_are_reported():
    with pytest.raises(ValueError, match=r"same shape; got \(2, 8\) and \(3, 8\)"):
        motion(torch.zeros(2, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="n >= 2"):
        interpolate(torch.zeros(2, 8), torch.zeros(2, 8), 1)
