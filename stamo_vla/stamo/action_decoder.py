"""Action decoder: latent motion Delta s = s_{t+k} - s_t (optionally with s_t) -> the k-step action chunk.

The paper (§4.6) decodes StaMo motion into actions with "a lightweight MLP"; once trained it maps a current
observation and a goal image to an executable action trajectory. Actions are in normalized units (BOUNDS_Q99,
gripper in {0, 1}); un-normalize them with the dataset statistics the decoder was trained with.

Shapes: motion (B, N, D) float, state (B, N, D) float, actions (B, k, A) float.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stamo_vla.configs import check_positive_int
from stamo_vla.fileio import read_json, save_weights, write_json_atomic

CONFIG_NAME = "action_decoder_config.json"
WEIGHTS_NAME = "action_decoder.safetensors"


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int, dropout: float = 0.0) -> nn.Sequential:
    """The probe MLP: Linear -> GELU (-> Dropout) repeated `layers - 1` times, then a Linear.

    Args:
        in_dim: input features.
        out_dim: output features.
        hidden: hidden width.
        layers: Linear layers (>= 1).
        dropout: dropout after each hidden activation (0: none).
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.GELU()]
        if dropout:
            mods.append(nn.Dropout(dropout))
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


@dataclass
class ActionDecoderConfig:
    """Size and inputs of the action decoder."""

    # Number of StaMo state tokens N.
    num_state_tokens: int = 2
    # StaMo token dim D.
    state_dim: int = 1024
    # k: actions per chunk, and the frame gap of the motion Delta s = s_{t+k} - s_t.
    horizon: int = 1
    # Action dimensionality A (LIBERO: 7 = delta EEF pos 3 + rot 3 + gripper).
    action_dim: int = 7
    # Also condition on the current state s_t (besides the motion).
    condition_on_state: bool = False
    # Hidden width of the MLP.
    hidden_size: int = 512
    # Linear layers in the MLP (>= 1).
    num_layers: int = 3
    # Dropout between hidden layers.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_state_tokens", "state_dim", "horizon", "action_dim", "hidden_size", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")


class ActionDecoder(nn.Module):
    """MLP from latent motion (and optionally the current state) to a normalized k-step action chunk."""

    def __init__(self, config: ActionDecoderConfig):
        super().__init__()
        self.config = config
        in_dim = config.num_state_tokens * config.state_dim * (2 if config.condition_on_state else 1)
        self.net = mlp(
            in_dim, config.horizon * config.action_dim, config.hidden_size, config.num_layers, config.dropout
        )
        # input standardization, fitted on the training set (buffers, saved with the weights)
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    def _inputs(self, motion: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        expected = (c.num_state_tokens, c.state_dim)
        if motion.dim() != 3 or tuple(motion.shape[1:]) != expected:
            raise ValueError(
                f"motion must be (B, {c.num_state_tokens}, {c.state_dim}); got {tuple(motion.shape)}"
            )
        x = motion.flatten(1)
        if c.condition_on_state:
            if state is None or state.shape != motion.shape:
                got = None if state is None else tuple(state.shape)
                raise ValueError(
                    f"condition_on_state=True needs state of shape {tuple(motion.shape)}; got {got}"
                )
            x = torch.cat([x, state.flatten(1)], dim=1)
        return x.float()

    def fit_normalization(
        self, motion: torch.Tensor, state: torch.Tensor | None = None, floor: float = 0.1
    ) -> None:
        """Input mean and std from training data; each std is floored at `floor` x the mean std.

        The floor keeps features that are near-constant in training (e.g. a collapsed state dimension) from
        being multiplied by ~1e6 on new data.

        Args:
            motion: training latent actions (B, N, D).
            state: training states (B, N, D) when the decoder also reads the current state, else None.
            floor: the std floor, as a fraction of the mean std.
        """
        x = self._inputs(motion, state)
        std = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1])
        scale = float(std.mean())
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(std.clamp(min=floor * scale if scale > 0 else 1.0))

    def forward(self, motion: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        x = (self._inputs(motion, state) - self.input_mean) / self.input_std
        return self.net(x).view(x.shape[0], self.config.horizon, self.config.action_dim)

    def loss(
        self, motion: torch.Tensor, actions: torch.Tensor, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE between predicted and target chunks (the paper's probe metric, Eq. 4).

        Args:
            motion: latent actions (B, N, D).
            actions: target action chunks (B, k, A).
            state: current states (B, N, D) when the decoder reads them, else None.
        """
        pred = self(motion, state)
        if actions.shape != pred.shape:
            raise ValueError(f"actions must be {tuple(pred.shape)} (B, k, A); got {tuple(actions.shape)}")
        return torch.mean((pred - actions.float()) ** 2)

    @torch.no_grad()
    def decode(
        self, encoder: nn.Module, current_image: torch.Tensor, goal_image: torch.Tensor
    ) -> torch.Tensor:
        """Goal-conditioned use: encode both images with the frozen StaMo encoder, return (B, k, A) normalized actions.

        Args:
            encoder: a `StaMoEncoder` (the one the decoder was trained with).
            current_image, goal_image: (B, 3, H, W) float in [0, 1].
        """
        s_t, s_goal = encoder.encode(current_image), encoder.encode(goal_image)
        return self(s_goal - s_t, s_t if self.config.condition_on_state else None)

    # ---- persistence -------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dataset_statistics: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / CONFIG_NAME, dataclasses.asdict(self.config))
        save_weights(self.state_dict(), directory / WEIGHTS_NAME)
        if dataset_statistics is not None:
            write_json_atomic(directory / "dataset_statistics.json", dataset_statistics)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ActionDecoder:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}: not an action decoder directory")
        config = read_json(directory / CONFIG_NAME, "Save the action decoder again.")
        model = cls(ActionDecoderConfig(**config))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model.eval()


def fit(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Train `model(*inputs) -> targets` with MSE and AdamW; deterministic given `seed`. Returns the loss curve.

    Args:
        model: the model trained in place.
        inputs: its positional inputs, each (N, ...).
        targets: the targets (N, ...).
        steps: optimizer steps.
        lr: the AdamW learning rate.
        batch_size: samples per step.
        weight_decay: the AdamW weight decay.
        seed: seeds the initial shuffle and the batches.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = targets.shape[0]
    curve = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        pred = model(*(x[idx] if x is not None else None for x in inputs))
        loss = torch.mean((pred - targets[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    model.eval()
    return curve
