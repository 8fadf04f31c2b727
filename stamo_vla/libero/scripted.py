"""Scripted pick-and-place for LIBERO from privileged simulator state (docs/reference/libero_scripted.md §3).

``ScriptedController(env).act()`` returns the next 7-D env action: a delta-EEF OSC_POSE command (3 position,
3 axis-angle, each in [-1, 1]) plus the gripper. Actions look like a teleoperator's:

- the gripper is held at -1 (open) or +1 (close) for whole phases, never alternated or pre-shaped with
  partial commands (policies cannot imitate a flickering gripper label; libero_scripted.md, last section);
- the arm dims carry small gaussian noise (seeded) while moving, so demonstrations of the same init state
  differ; settle/idle steps are exact no-ops, which collection drops like upstream did.

Phases: settle -> approach (above the grasp) -> descend -> close -> lift (grasp check) -> transport ->
place -> release -> retreat -> done. A failed lift, a dropped object or a place that did not satisfy the
goal re-plans from the current state (``max_retries`` times), after which the controller gives up.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np

from stamo_vla.libero.env import DUMMY_ACTION, NUM_STEPS_WAIT
from stamo_vla.libero.scripted_geometry import (
    Grasp,
    gripper_down_matrix,
    plan_pinch,
    plan_rim,
    rotation_to_axis_angle,
    wrap_half_turn,
)
from stamo_vla.libero.scripted_scene import PlaceGoal, Scene

OPEN, CLOSE = -1.0, 1.0
# OSC_POSE maps a = +-1 to 0.05 m / 0.5 rad of goal offset per step (robosuite osc_pose.json)
POS_SCALE, ROT_SCALE = 0.05, 0.5


class Phase(str, enum.Enum):
    SETTLE = "settle"
    APPROACH = "approach"
    DESCEND = "descend"
    CLOSE = "close"
    LIFT = "lift"
    TRANSPORT = "transport"
    PLACE = "place"
    RELEASE = "release"
    RETREAT = "retreat"
    REOPEN = "reopen"
    DONE = "done"
    FAILED = "failed"


# gripper command held for the whole of each phase
_GRIPPER = {p: CLOSE if p in {Phase.CLOSE, Phase.LIFT, Phase.TRANSPORT, Phase.PLACE} else OPEN for p in Phase}
# phases whose arm command is an exact no-op (no noise): they are dropped from datasets as no-ops
_IDLE = {Phase.SETTLE, Phase.DONE, Phase.FAILED}


@dataclasses.dataclass(frozen=True)
class ScriptedControllerConfig:
    """Tunables of the scripted controller (defaults solved 49/50 spatial and 50/50 object in the probe)."""

    noise_std: float = 0.05  # std of gaussian noise added to the 6 arm dims while moving (action units)
    max_retries: int = 2  # re-plans after a failed grasp / drop / unsatisfied place before giving up
    approach_height: float = 0.08  # m above max(object top, grasp point) to line up before descending
    settle_max_extra_steps: int = 30  # extra no-op steps (after the 10 wait steps) while objects still move
    carry_clearance: float = 0.04  # m the held object's bottom clears the target's top while carrying

    def __post_init__(self):
        if not 0.0 <= self.noise_std <= 0.5:
            raise ValueError(f"noise_std={self.noise_std!r} must be in [0, 0.5]")
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries!r} must be >= 0")
        if self.approach_height <= 0 or self.carry_clearance <= 0:
            raise ValueError("approach_height and carry_clearance must be positive")


class ScriptedController:
    """State machine that solves one LIBERO pick-and-place episode from privileged state.

    Create it right after ``reset`` + ``set_init_state``; call ``act()`` once per env step.

    Args:
        env: the LIBERO env (``env.env`` is the robosuite task).
        seed: seed of the arm-noise generator (``EpisodeSpec.noise_seed``).
        config: tunables.
    """

    def __init__(self, env: Any, seed: int = 0, config: ScriptedControllerConfig | None = None):
        self.cfg = config or ScriptedControllerConfig()
        self.scene = Scene(env)
        self.goal: PlaceGoal = self.scene.goal()
        self.rng = np.random.default_rng(seed)
        self.phase = Phase.SETTLE
        self.phase_steps = 0
        self.retries = 0
        self.steps = 0
        self._settle_extra = 0
        self._last_obj: np.ndarray | None = None
        self.grasp: Grasp | None = None
        self.yaw = math.pi / 2  # closing-axis yaw; the home pose closes along world +y

    # ---------------------------------------------------------------- public
    def status(self) -> dict:
        """Phase name, retry count and whether the controller gave up (picklable)."""
        return {"phase": self.phase.value, "retries": self.retries, "gave_up": self.phase is Phase.FAILED}

    def act(self) -> np.ndarray:
        """The next env action (7,): arm command in [-1, 1] and gripper exactly -1 or +1."""
        arm = getattr(self, f"_{self.phase.value}")()
        self.steps += 1
        self.phase_steps += 1
        if self.phase in _IDLE:
            return np.array(DUMMY_ACTION, dtype=np.float64)
        noise = self.rng.normal(0.0, self.cfg.noise_std, 6) if self.cfg.noise_std > 0 else 0.0
        return np.concatenate([np.clip(arm + noise, -1.0, 1.0), [_GRIPPER[self.phase]]])

    # ---------------------------------------------------------------- helpers
    def _go(self, phase: Phase) -> np.ndarray:
        """Switch phase and return that phase's action for this same step."""
        self.phase, self.phase_steps = phase, 0
        self._mark = self.scene.eef_pos()
        return getattr(self, f"_{phase.value}")()

    def _servo(self, target: np.ndarray, vmax: float = 1.0) -> tuple[np.ndarray, float, float]:
        """Arm command toward `target` at the planned yaw; returns (command, position error, angle error)."""
        err = target - self.scene.eef_pos()
        pos = np.clip(err / POS_SCALE, -vmax, vmax)
        rot_err = rotation_to_axis_angle(gripper_down_matrix(self.yaw) @ self.scene.eef_mat().T)
        rot = np.clip(rot_err / ROT_SCALE, -1.0, 1.0)
        return np.concatenate([pos, rot]), float(np.linalg.norm(err)), float(np.linalg.norm(rot_err))

    def _displacement(self) -> np.ndarray:
        """How far the object moved since the grasp was planned (the grasp follows it)."""
        return self.scene.body_pos(self.goal.obj) - self._plan_body

    def _plan(self) -> np.ndarray:
        scene, obj = self.scene, self.goal.obj
        points, body = scene.points(obj), scene.body_pos(obj)
        obstacles = scene.obstacles(exclude=obj)
        grasp = plan_pinch(points, body, obstacles)
        if grasp is None:
            grasp = plan_rim(points, body, obstacles, scene.base_xy(), self._target_xy())
        self.grasp, self._plan_body, self._obj_top = grasp, body, float(points[:, 2].max())
        # the parallel gripper is symmetric: turn the closing axis the short way
        current = math.atan2(scene.eef_mat()[1, 0], scene.eef_mat()[0, 0])
        self.yaw = current + wrap_half_turn(grasp.yaw - current)
        return self._go(Phase.APPROACH)

    def _target_xy(self) -> np.ndarray:
        if self.goal.target_is_site:
            return self.scene.site_box(self.goal.target)[0][:2]
        return self.scene.body_pos(self.goal.target)[:2]

    def _place_height(self) -> float:
        """Height for the held object's lowest point when it is set down."""
        if self.goal.target_is_site:
            centre, half = self.scene.site_box(self.goal.target)
            top = centre[2] + half[2]
            return top if self.goal.relation == "in" else top + 0.01
        return float(self.scene.points(self.goal.target)[:, 2].max()) + 0.01

    def _object_bottom(self) -> float:
        return float(self.scene.points(self.goal.obj)[:, 2].min())

    def _retry(self) -> np.ndarray:
        self.retries += 1
        if self.retries > self.cfg.max_retries:
            return self._go(Phase.FAILED)
        return self._go(Phase.REOPEN)

    # ---------------------------------------------------------------- phases
    def _settle(self) -> np.ndarray:
        obj = self.scene.body_pos(self.goal.obj)
        moving = self._last_obj is None or np.linalg.norm(obj - self._last_obj) > 5e-4
        self._last_obj = obj
        if self.scene.timestep < NUM_STEPS_WAIT:
            return np.zeros(6)
        if moving and self._settle_extra < self.cfg.settle_max_extra_steps:
            self._settle_extra += 1
            return np.zeros(6)
        return self._plan()

    def _approach(self) -> np.ndarray:
        point = self.grasp.point + self._displacement()
        z = max(self._obj_top + self._displacement()[2], point[2]) + self.cfg.approach_height
        cmd, err, ang = self._servo(np.array([point[0], point[1], z]))
        if (err < 0.015 and ang < 0.08) or self.phase_steps > 60:
            return self._go(Phase.DESCEND)
        return cmd

    def _descend(self) -> np.ndarray:
        target = self.grasp.point + self._displacement()
        above = self.scene.eef_pos()[2] - target[2]
        cmd, err, _ = self._servo(target, vmax=1.0 if above > 0.05 else 0.4)
        if err < 0.006 or self.phase_steps > 80:
            return self._go(Phase.CLOSE)
        return cmd

    def _close(self) -> np.ndarray:
        if self.phase_steps >= 12:
            self._lift_start = self.scene.eef_pos()
            self._obj_start_z = self.scene.body_pos(self.goal.obj)[2]
            hold_depth = self._lift_start[2] - self._object_bottom()
            place_top = self._place_height() - 0.01
            self._carry_z = max(
                place_top + hold_depth + self.cfg.carry_clearance,
                self.grasp.point[2] + 0.12,
                self._lift_start[2],
            )
            return self._go(Phase.LIFT)
        return self._servo(self._mark, vmax=0.3)[0]

    def _lift(self) -> np.ndarray:
        eef = self.scene.eef_pos()
        if eef[2] - self._lift_start[2] >= 0.04 or self.phase_steps >= 40:
            risen = self.scene.body_pos(self.goal.obj)[2] - self._obj_start_z
            if not (self.scene.fingers_touch(self.goal.obj) and risen >= 0.005):
                return self._retry()
            self._held = self.scene.body_pos(self.goal.obj) - eef
            return self._go(Phase.TRANSPORT)
        return self._servo(np.array([*self._lift_start[:2], self._carry_z]))[0]

    def _carry_target(self) -> np.ndarray:
        rel = self.scene.body_pos(self.goal.obj) - self.scene.eef_pos()
        return self._target_xy() - rel[:2]

    def _dropped(self) -> bool:
        rel = self.scene.body_pos(self.goal.obj) - self.scene.eef_pos()
        return bool(np.linalg.norm(rel - self._held) > 0.04)

    def _transport(self) -> np.ndarray:
        if self._dropped():
            return self._retry()
        xy = self._carry_target()
        cmd, _, _ = self._servo(np.array([*xy, self._carry_z]))
        xy_err = float(np.linalg.norm(xy - self.scene.eef_pos()[:2]))
        if xy_err < 0.01 or self.phase_steps > 150:
            return self._go(Phase.PLACE)
        return cmd

    def _place(self) -> np.ndarray:
        if self._dropped():
            return self._retry()
        eef = self.scene.eef_pos()
        z = eef[2] + self._place_height() - self._object_bottom()
        cmd, err, _ = self._servo(np.array([*self._carry_target(), z]), vmax=0.6)
        if err < 0.008 or self.phase_steps > 80:
            return self._go(Phase.RELEASE)
        return cmd

    def _release(self) -> np.ndarray:
        if self.phase_steps >= 8:
            return self._go(Phase.RETREAT)
        return self._servo(self._mark, vmax=0.3)[0]

    def _retreat(self) -> np.ndarray:
        cmd, err, _ = self._servo(self._mark + np.array([0.0, 0.0, 0.10]))
        if err < 0.02 or self.phase_steps > 40:
            return self._go(Phase.DONE)
        return cmd

    def _reopen(self) -> np.ndarray:
        """Open for 8 steps while backing up 5 cm, then plan a new grasp from the current state."""
        if self.phase_steps >= 8:
            return self._plan()
        return self._servo(self._mark + np.array([0.0, 0.0, 0.05]), vmax=0.5)[0]

    def _done(self) -> np.ndarray:
        if not self.scene.success():
            return self._retry()
        return np.zeros(6)

    def _failed(self) -> np.ndarray:
        return np.zeros(6)
