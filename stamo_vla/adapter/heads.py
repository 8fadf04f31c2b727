"""Prediction heads that read a backbone hidden state and predict an auxiliary target (StaMo state, motion, ...)."""

from __future__ import annotations

import torch
from torch import nn


class StateHead(nn.Module):
    """LayerNorm -> (Linear -> GELU) x (depth - 1) -> Linear, reshaped to (B, num_tokens, token_dim).

    The paper attaches "a lightweight MLP head" to the autoregressive backbone; this is that head. It predicts
    the *standardized* target, ``(target - target_mean) / target_std`` per dimension; `unstandardize` maps its
    outputs back. The statistics are buffers saved with the head weights; a head saved without them (older
    adapters) loads with mean 0 and std 1, i.e. raw targets as before.
    """

    STATISTICS = ("target_mean", "target_std")

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
        self.register_buffer("target_mean", torch.zeros(num_tokens, token_dim))
        self.register_buffer("target_std", torch.ones(num_tokens, token_dim))

    @torch.no_grad()
    def set_target_statistics(self, mean, std, min_std: float = 1e-6) -> None:
        """Standardize targets with this per-dimension `mean` and `std` ((N, D) arrays or tensors).

        Args:
            mean: per-dimension mean of the target, (N, D).
            std: per-dimension std of the target, (N, D).
            min_std: floor of the std (a constant dimension is not blown up).

        Raises:
            ValueError: wrong shape or non-finite values (naming which).
        """
        values = {}
        for name, value, buffer in (("mean", mean, self.target_mean), ("std", std, self.target_std)):
            value = torch.as_tensor(value, dtype=torch.float32)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"target {name} has shape {tuple(value.shape)}; the head predicts {tuple(buffer.shape)}"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"target {name} holds non-finite values; rebuild the target cache")
            values[name] = value
        self.target_mean.copy_(values["mean"].to(self.target_mean.device))
        # a constant dimension standardizes to 0, never to inf
        self.target_std.copy_(values["std"].clamp_min(min_std).to(self.target_std.device))

    def standardize(self, target: torch.Tensor) -> torch.Tensor:
        return (target.float() - self.target_mean) / self.target_std

    def unstandardize(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.float() * self.target_std + self.target_mean

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved head weights; statistics missing from an older file stay mean 0 / std 1."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        problems = [k for k in missing if k not in self.STATISTICS] + list(unexpected)
        if problems:
            self.load_state_dict(state)  # strict: raises with torch's message naming every key

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
