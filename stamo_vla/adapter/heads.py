"""Prediction heads that read a backbone hidden state and predict a StaMo state (or motion)."""

from __future__ import annotations

import torch
from torch import nn


class StateHead(nn.Module):
    """LayerNorm -> (Linear -> GELU) x (depth - 1) -> Linear, reshaped to (B, num_tokens, token_dim).

    The paper attaches "a lightweight MLP head" to the autoregressive backbone; this is that head.
    """

    def __init__(self, hidden_size: int, num_tokens: int, token_dim: int, depth: int = 2, width: int = 1024):
        super().__init__()
        self.num_tokens, self.token_dim = num_tokens, token_dim
        layers: list[nn.Module] = [nn.LayerNorm(hidden_size)]
        in_dim = hidden_size
        for _ in range(depth - 1):
            layers += [nn.Linear(in_dim, width), nn.GELU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, num_tokens * token_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, hidden_size) -> (B, num_tokens, token_dim)."""
        out = self.mlp(features)
        return out.view(features.shape[0], self.num_tokens, self.token_dim)


def future_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's future loss, MSE + L1 (Eq. 2), plus cosine similarity as a diagnostic.

    Args:
        pred, target: (B, N, D) float.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"future target has shape {tuple(target.shape)} but the head predicts {tuple(pred.shape)}"
        )
    pred, target = pred.float(), target.float()
    mse = torch.mean((pred - target) ** 2)
    l1 = torch.mean(torch.abs(pred - target))
    cos = torch.nn.functional.cosine_similarity(pred.flatten(1), target.flatten(1), dim=-1).mean()
    metrics = {"future_mse": mse.item(), "future_l1": l1.item(), "future_cosine": cos.item()}
    return mse + l1, metrics
