"""Reading and writing StaMo weight files (safetensors) with errors that say what does not match."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from stamo_vla.fileio import save_weights
from stamo_vla.stamo.configuration_stamo import WEIGHTS_NAME

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_state(state: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """Write `state` to ``<directory>/model.safetensors`` atomically."""
    save_weights(state, Path(directory) / WEIGHTS_NAME, metadata={"format": "pt"})


def load_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No {WEIGHTS_NAME} in '{directory}': is it a StaMo save_pretrained directory?"
        )
    return load_file(str(path))


def select(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under `prefix` (``"encoder."``), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], expected: set[str], where: str) -> None:
    """Load `state` into `module`, requiring exactly the keys in `expected` with matching shapes.

    Args:
        module: the module loaded into.
        state: the state dict read.
        expected: the keys `state` must hold.
        where: the file or model named in the message.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, listed in the message.
    """
    own = module.state_dict()
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(expected & state.keys())
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"shape mismatch {len(mismatched)} (e.g. {mismatched[:3]})")
        raise ValueError(
            f"The weights in '{where}' do not match its config.json: {'; '.join(parts)}. "
            "Was config.json edited, or the weights copied from another run?"
        )
    module.load_state_dict(state, strict=False)
