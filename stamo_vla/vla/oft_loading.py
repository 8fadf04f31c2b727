"""The separate head files of a released OpenVLA-OFT checkpoint directory: find, read, check.

Layout (moojink/openvla-oft ``vla-scripts/finetune.py``; docs/reference/openvla.md, "Released OpenVLA-OFT checkpoint
directories"): beside the merged OpenVLA weights and ``dataset_statistics.json`` lie

    action_head--<step>_checkpoint.pt         L1 head (MLP-ResNet), keys ``[module.]model.<...>``
    proprio_projector--<step>_checkpoint.pt   proprio projector, keys ``[module.]fc1.weight`` ... ``fc2.bias``

``torch.save``d state dicts of DDP-wrapped modules, so every key usually starts with ``module.``. They are read
with ``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from stamo_vla.vla.loading import CheckpointError

ACTION_HEAD = "action_head"
PROPRIO_PROJECTOR = "proprio_projector"
FILM_BACKBONE = "vision_backbone"  # FiLM (OFT+) checkpoints save the whole FiLMed vision backbone
DDP_PREFIX = "module."


def _pattern(component: str) -> re.Pattern:
    return re.compile(rf"^{component}--(\d+)_checkpoint\.pt$")


def component_files(directory: Path, component: str) -> dict[int, Path]:
    """Step -> file of every ``<component>--<step>_checkpoint.pt`` in `directory`."""
    pattern = _pattern(component)
    found = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def is_oft_directory(directory: str | Path) -> bool:
    """True when `directory` holds a released-layout OFT action head beside the model weights."""
    directory = Path(directory)
    return directory.is_dir() and bool(component_files(directory, ACTION_HEAD))


def find_component(directory: Path, component: str, step: int | None, required: bool) -> Path | None:
    """The one ``<component>--<step>_checkpoint.pt`` file (`step` picks one when several steps are present).

    Args:
        directory: the OFT checkpoint directory.
        component: the component's name (action_head, proprio_projector, ...).
        step: the training step wanted (None: the only one).
        required: raise when the file is missing (else None).
    """
    files = component_files(directory, component)
    if step is not None:
        if step in files:
            return files[step]
        if required or files:
            raise CheckpointError(
                f"OpenVLA-OFT checkpoint {directory}: no {component}--{step}_checkpoint.pt; found steps "
                f"{sorted(files)} of {component}."
            )
        return None
    if len(files) > 1:
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint {directory}: {component} files of several steps {sorted(files)}; pass "
            "step=<one of them>."
        )
    if not files:
        if required:
            raise CheckpointError(
                f"OpenVLA-OFT checkpoint {directory}: {component}--<step>_checkpoint.pt is missing (found "
                f"{sorted(p.name for p in directory.iterdir())})."
            )
        return None
    return next(iter(files.values()))


def step_of(path: Path, component: str) -> int:
    """The ``<step>`` of a ``<component>--<step>_checkpoint.pt`` file name."""
    return int(_pattern(component).match(path.name).group(1))


def check_head_files(
    directory: Path, head_file: Path, proprio_file: Path | None, use_proprio: bool | None
) -> None:
    """Refuse a head and a projector of different training steps; warn when an optional projector is absent.

    Upstream saves both files at every checkpoint step, so two steps mean files of two checkpoints (or runs) side
    by side; a missing projector is either a checkpoint trained without proprio or an interrupted download.

    Args:
        directory: the OFT checkpoint directory.
        head_file: the action head's file.
        proprio_file: the proprio projector's file, or None.
        use_proprio: whether the model uses proprio (None: not known; a missing projector is then warned
            about).
    """
    if proprio_file is not None:
        head_step, proprio_step = step_of(head_file, ACTION_HEAD), step_of(proprio_file, PROPRIO_PROJECTOR)
        if head_step != proprio_step:
            raise CheckpointError(
                f"OpenVLA-OFT checkpoint {directory}: the action head is from step {head_step} ({head_file.name}) "
                f"but the proprio projector from step {proprio_step} ({proprio_file.name}); upstream saves both at "
                "every step, so these belong to different checkpoints. Keep the pair of one step, or pass "
                "step=<step> when both steps are complete."
            )
    elif use_proprio is None:
        warnings.warn(
            f"OpenVLA-OFT checkpoint {directory} has no {PROPRIO_PROJECTOR}--<step>_checkpoint.pt: the model runs "
            "without a proprio token and refuses proprio inputs. If the download was interrupted, fetch the file "
            "(the LIBERO checkpoints all have one); pass use_proprio=False to load without it silently.",
            stacklevel=3,
        )


def read_component(path: Path) -> dict[str, torch.Tensor]:
    """A head's state dict with any DDP ``module.`` prefix removed (loaded on the CPU, weights only).

    Raises:
        CheckpointError: the file is truncated or corrupt, holds pickled code, is not a state dict of tensors, or
            holds NaN/inf (each names the file; the last also the tensor).
    """
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses pickled code (and other non-tensor objects)
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint: {path} holds objects torch.load(weights_only=True) refuses to run "
            f"({str(err).splitlines()[0]}); only a state dict of tensors is loaded. Take the file from its source."
        ) from err
    except (
        Exception
    ) as err:  # a short or damaged zip: "[Errno 22] Invalid argument", "failed finding central ..."
        size = path.stat().st_size
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint: {path} ({size} bytes) is truncated or corrupt: torch.load cannot read it "
            f"({type(err).__name__}: {err}). Download or copy it again from the checkpoint's source."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"OpenVLA-OFT checkpoint: {path} does not hold a state dict of tensors.")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"OpenVLA-OFT checkpoint: {path} holds NaN/inf in '{key}' ({bad} of {value.numel()} values), so "
                "every action chunk would be NaN. Take the file from an earlier checkpoint of the run, or "
                "download it again."
            )
    return {k[len(DDP_PREFIX) :] if k.startswith(DDP_PREFIX) else k: v for k, v in state.items()}


def head_sizes(state: dict[str, torch.Tensor], path: Path, hidden_size: int) -> tuple[int, int]:
    """(action_dim, MLP width) of an L1 head state dict, checked against the LLM hidden size.

    Args:
        state: the head's state dict.
        path: its file (named in errors).
        hidden_size: the LLM's hidden size.
    """
    weight = state.get("model.fc1.weight")
    out = state.get("model.fc2.weight")
    if weight is None or out is None or weight.ndim != 2 or out.ndim != 2:
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint: {path} is not an L1 regression action head (no model.fc1.weight / "
            f"model.fc2.weight); keys: {sorted(state)[:6]}..."
        )
    width, inputs = weight.shape
    action_dim = out.shape[0]
    if inputs != hidden_size * action_dim:
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint: {path} expects {inputs} input features, but the model's hidden size "
            f"{hidden_size} x action dim {action_dim} = {hidden_size * action_dim}: the head does not fit this model."
        )
    return action_dim, width


def proprio_dim_of(state: dict[str, torch.Tensor], path: Path) -> int:
    weight = state.get("fc1.weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(
            f"OpenVLA-OFT checkpoint: {path} is not a proprio projector (no fc1.weight); keys: {sorted(state)}."
        )
    return int(weight.shape[1])


def load_component(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `state` into `module` (dtype and device of the module); any missing, extra or mis-shaped key fails.

    Args:
        module: the module loaded into.
        state: the state dict read.
        path: its file (named in errors).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched[:5]}")
    if problems:
        raise CheckpointError(f"OpenVLA-OFT checkpoint: {path} does not fit: " + "; ".join(problems) + ".")
    module.load_state_dict(state)
