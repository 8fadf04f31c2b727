"""What the evaluation runs: the policy kinds (a registered config choice), the scripted oracle, and the
statistics-key resolution every VLA policy uses.

``--policy.type`` picks a kind; each kind is a dataclass that owns its loading fields and builds a
`stamo_vla.policy.Policy`, which the harness runs (the protocol is documented there). The harness registers the
kind it can build without a model, ``scripted``; the kinds that load models (``checkpoint``, ``adapter``,
``oft``) are registered by `stamo_vla.evaluation`, the layer that may import model code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import draccus
import numpy as np

from stamo_vla.policy import Policy

if TYPE_CHECKING:
    from stamo_vla.libero.evaluation_config import EvalConfig

# the kind of a bare ``--policy.<field>`` (``--policy.checkpoint DIR`` alone evaluates our checkpoint)
DEFAULT_POLICY = "checkpoint"


class PolicyConfig(draccus.ChoiceRegistry):
    """What the evaluation runs (set ``policy.type``; default ``checkpoint``): each kind owns its loading fields."""

    # The kind acts on privileged simulator state read inside the env workers (they start with the controller).
    reads_simulator_state: ClassVar[bool] = False

    @classmethod
    def default_choice_name(cls) -> str:
        return DEFAULT_POLICY

    @property
    def name(self) -> str:
        """The registered name (``checkpoint`` | ``adapter`` | ``oft`` | ``scripted``)."""
        return PolicyConfig.get_choice_name(type(self))

    def build(self, cfg: EvalConfig, device_index: int = 0, pool: Any = None) -> Policy:
        """The `Policy` the harness runs for `cfg`.

        Args:
            cfg: the whole evaluation config (the suites, the crop and the video settings some kinds read).
            device_index: the CUDA device of this evaluation process.
            pool: the env workers, given only to a kind that `reads_simulator_state`; the others are built
                before any worker starts.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def check_settings(self, cfg: EvalConfig) -> None:
        """Raise a ValueError naming the fields when the kind cannot run with the rest of `cfg` (called by
        `EvalConfig.__post_init__`)."""

    def input_dirs(self) -> dict[str, str | None]:
        """The directories the kind reads, by field name (the output folder may not be one of them)."""
        return {}

    def provenance_dir(self) -> str | None:
        """The directory whose provenance records how the policy's training images were made (None: none)."""
        return None

    def check_paths(self) -> None:
        """Raise a clear error for a missing input (at run time, not at parse time)."""

    def outcome_settings(self) -> dict[str, Any]:
        """The settings that change episode outcomes, in the flat names that evaluation config.yaml files have
        always recorded: a resumed run must match them."""
        return {"policy": self.name}


@PolicyConfig.register_subclass("scripted")
@dataclass
class ScriptedPolicyConfig(PolicyConfig):
    """The privileged scripted pick-and-place controller: an upper bound that proves the harness (no fields)."""

    reads_simulator_state = True

    def build(self, cfg: EvalConfig, device_index: int = 0, pool: Any = None) -> Policy:
        """The oracle over the started env workers.

        Args:
            cfg: the evaluation config (unused: the oracle needs no model).
            device_index: unused (no model).
            pool: the started env worker pool, whose workers compute the controller's actions.
        """
        if pool is None:
            raise ValueError(
                "policy.type=scripted reads the simulator: build it with the started env worker pool"
            )
        return ScriptedOraclePolicy(pool)


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
        """Ask each row's worker for its controller action; returns (B, 1, 7) env actions.

        Args:
            images: one observation image per row (only their number is used).
            instructions: one instruction per row (the controller ignores language).
            slots: the env worker slot of each row.
            **obs: other observation fields (unused).
        """
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
