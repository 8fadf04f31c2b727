"""Policies of the harness itself: the scripted oracle, and the statistics-key resolution every VLA policy uses.

The harness runs any `stamo_vla.policy.Policy` (the protocol is documented there): our VLA, the VLA + adapter,
and the privileged scripted oracle all run through the same code path.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stamo_vla.policy import Policy


class ScriptedOraclePolicy(Policy):
    """The scripted pick-and-place controller as a policy: an upper bound that proves the harness.

    It reads privileged simulator state inside the env workers (``pool.scripted_actions``), so its
    actions are already env actions (gripper -1 open / +1 close, possibly fractional while pre-shaping):
    converting them to dataset convention and back would binarize the gripper and change the controller.

    Args:
        pool: an ``EnvWorkerPool`` started with ``scripted=True``.
    """

    action_chunk = 1
    actions_in_env_convention = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def predict_batch(
        self, images: list[np.ndarray], instructions: list[str], slots: Sequence[int] = (), **obs: Any
    ) -> np.ndarray:
        """Ask each row's worker for its controller action; returns (B, 1, 7) env actions."""
        if len(slots) != len(images):
            raise ValueError(
                f"ScriptedOraclePolicy needs one worker slot per image, got {len(slots)} slots for "
                f"{len(images)} images; the evaluation loop passes slots=..."
            )
        actions = self.pool.scripted_actions(list(slots))
        return np.stack([np.asarray(actions[s], dtype=np.float64) for s in slots])[:, None, :]


def resolve_unnorm_key(available: Iterable[str], suite: str, requested: str | None = None) -> str:
    """Pick the action-statistics key for `suite` as upstream does.

    Args:
        available: keys of the model's action statistics (``norm_stats`` / ``dataset_statistics.json``).
        suite: the suite being evaluated; the default key.
        requested: an explicit key from the config, used as is when present.

    Returns:
        `requested` if given, else `suite`, else ``<suite>_no_noops`` (the name of the released datasets).

    Raises:
        ValueError: the key is not among `available`; the message lists the available keys.
    """
    keys = sorted(available)
    candidates = [requested] if requested else [suite, f"{suite}_no_noops"]
    for key in candidates:
        if key in keys:
            return key
    close = difflib.get_close_matches(candidates[0], keys, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"unnorm_key: none of {candidates} is in the checkpoint's action statistics.{hint} Available keys: "
        f"{keys}. Pass --unnorm_key <key>, or put the fine-tuning run's dataset_statistics.json beside the "
        "checkpoint."
    )
