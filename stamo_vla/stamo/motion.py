"""Latent motion: differences of StaMo states behave as actions (paper §3.2).

All functions take states of shape (..., N, D) and broadcast like ordinary tensor arithmetic.
"""

from __future__ import annotations

import torch


def _same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def motion(s_t: torch.Tensor, s_th: torch.Tensor) -> torch.Tensor:
    """Latent motion from state `s_t` to state `s_th` (= s_{t+h} - s_t)."""
    _same_shape("s_t", s_t, "s_th", s_th)
    return s_th - s_t


def interpolate(s_a: torch.Tensor, s_b: torch.Tensor, n: int) -> torch.Tensor:
    """`n` states evenly spaced from `s_a` to `s_b`, endpoints included: shape (n, *s_a.shape).

    Args:
        s_a: the first state.
        s_b: the last state.
        n: the number of states (>= 2).
    """
    _same_shape("s_a", s_a, "s_b", s_b)
    if n < 2:
        raise ValueError(f"n={n} is not valid; interpolation needs n >= 2 (both endpoints)")
    w = torch.linspace(0, 1, n, dtype=s_a.dtype, device=s_a.device).view(n, *([1] * s_a.ndim))
    return (1 - w) * s_a.unsqueeze(0) + w * s_b.unsqueeze(0)


def transfer(src_a: torch.Tensor, src_b: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Apply the motion src_a -> src_b to `tgt` (= tgt + src_b - src_a; the paper's tokens(3) + tokens(2) - tokens(1)).

    Args:
        src_a: the source's first state.
        src_b: the source's second state.
        tgt: the state the motion is applied to.
    """
    _same_shape("src_a", src_a, "src_b", src_b)
    _same_shape("src_a", src_a, "tgt", tgt)
    return tgt + motion(src_a, src_b)
