"""Geometry for the scripted LIBERO controller: rotations, collision point clouds, grasp search.

All numbers are SI units in the world frame (x away from the robot, z up). The measured gripper and
object facts behind the constants are in docs/reference/libero_scripted.md §1-3.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# the Panda's widest opening between the pads is ~0.079 m; objects wider than this along the closing
# axis cannot be pinched whole
MAX_GRASP_WIDTH = 0.072
# bowls (outer diameter 0.107 m) are pinched on their wall at this radius from the centre
BOWL_RIM_RADIUS = 0.048
# grip site this far below the local rim top keeps the hand bottom (0.024 m above the site) clear
BOWL_RIM_DEPTH = 0.015
# hand collision box around the grip site: half extents along / across the closing axis, bottom offset
HAND_HALF_U, HAND_HALF_V, HAND_BOTTOM = 0.105, 0.04, 0.016
# finger boxes: |u| between these, |v| below FINGER_HALF_V, from FINGER_BOTTOM below the grasp height up
FINGER_U_MIN, FINGER_U_MAX, FINGER_HALF_V, FINGER_BOTTOM = 0.035, 0.07, 0.016, 0.021


def gripper_down_matrix(yaw: float) -> np.ndarray:
    """Grip-site orientation pointing straight down with the finger-closing axis at `yaw` (rad).

    Columns: x = closing axis (cos yaw, sin yaw, 0), z = approach (0, 0, -1), y = z x x. At yaw = 90 deg
    this is the Panda's home orientation in LIBERO (closing along world +y).
    """
    x = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def rotation_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """Axis * angle (3,) of a rotation matrix (scipy's rotation vector: stable near 0 and pi)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(rot, dtype=np.float64)).as_rotvec()


def wrap_half_turn(angle: float) -> float:
    """Wrap to [-pi/2, pi/2): a parallel gripper is symmetric under a half turn about its approach axis."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


@dataclasses.dataclass
class Grasp:
    """A planned grasp: where the grip site goes and how the closing axis is turned."""

    point: np.ndarray  # (3,) grip-site position at closing time, world frame
    yaw: float  # closing-axis yaw (rad)
    rim: bool  # True for a bowl rim pinch
    offset: np.ndarray  # (3,) grasp point minus the object's body position at planning time
    collides: bool  # True when no collision-free candidate existed and the best colliding one was kept


def _frame(yaw: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])


def hits_obstacles(
    point: np.ndarray, yaw: float, obstacles: np.ndarray, finger_u_min: float = FINGER_U_MIN
) -> bool:
    """Whether the open hand or fingers at (point, yaw) would touch any obstacle point (N, 3).

    Args:
        point: the grasp point (3,).
        yaw: the hand's yaw (radians).
        obstacles: the points (N, 3) the hand must not touch.
        finger_u_min: the closest the fingers reach along the hand's axis.
    """
    if len(obstacles) == 0:
        return False
    u_axis, v_axis = _frame(yaw)
    rel = obstacles[:, :2] - point[:2]
    u, v, z = np.abs(rel @ u_axis), np.abs(rel @ v_axis), obstacles[:, 2]
    hand = (u < HAND_HALF_U) & (v < HAND_HALF_V) & (z > point[2] + HAND_BOTTOM)
    fingers = (u > finger_u_min) & (u < FINGER_U_MAX) & (v < FINGER_HALF_V) & (z > point[2] - FINGER_BOTTOM)
    return bool(np.any(hand | fingers))


def grasp_height(points: np.ndarray) -> float:
    """Grip-site height for a pinch grasp of an object given its collision points (N, 3)."""
    lo, hi = float(points[:, 2].min()), float(points[:, 2].max())
    h = hi - lo
    z = max(lo + 0.013, hi - 0.035, lo + h / 2 if h < 0.05 else -math.inf)
    return min(z, hi - 0.004)


def plan_pinch(points: np.ndarray, body_pos: np.ndarray, obstacles: np.ndarray) -> Grasp | None:
    """Search yaw (10 deg steps) and offsets along the long axis for a collision-free pinch.

    Prefers the home yaw (90 deg: least wrist rotation) and centred grasps. Returns None when no yaw
    makes the object narrow enough to pinch (bowls: use `plan_rim`).

    Args:
        points: the object's surface points (N, 3).
        body_pos: the object's body position (3,).
        obstacles: the points (M, 3) the hand must not touch.
    """
    z = grasp_height(points)
    best: tuple[float, Grasp] | None = None
    for yaw in np.deg2rad(np.arange(0, 180, 10)):
        u_axis, v_axis = _frame(yaw)
        u, v = points[:, :2] @ u_axis, points[:, :2] @ v_axis
        if u.max() - u.min() > MAX_GRASP_WIDTH:
            continue
        centre = u_axis * (u.max() + u.min()) / 2 + v_axis * (v.max() + v.min()) / 2
        half_len = (v.max() - v.min()) / 2
        for off in (0.0, 0.01, -0.01, 0.02, -0.02):
            if abs(off) > max(half_len - 0.01, 0.0):
                continue
            point = np.array([*(centre + off * v_axis), z])
            collides = hits_obstacles(point, yaw, obstacles)
            score = 0.05 * abs(yaw - math.pi / 2) + 0.5 * abs(off) + (10.0 if collides else 0.0)
            if best is None or score < best[0]:
                best = (score, Grasp(point, float(yaw), False, point - body_pos, collides))
    return None if best is None else best[1]


def plan_rim(
    points: np.ndarray,
    body_pos: np.ndarray,
    obstacles: np.ndarray,
    base_xy: np.ndarray,
    place_xy: np.ndarray,
) -> Grasp:
    """Pinch a bowl's wall: 24 directions around the centre, scored by collisions and reach.

    Reach (horizontal distance from the robot base) is penalised at the pick and at the place pose:
    far poses stall the arm near its joint limits (docs/reference/libero_scripted.md §3.4).

    Args:
        points: the bowl's surface points (N, 3).
        body_pos: the bowl's body position (3,).
        obstacles: the points (M, 3) the hand must not touch.
        base_xy: the robot base's (x, y).
        place_xy: the (x, y) where the bowl is placed.
    """
    centre = (points[:, :2].min(axis=0) + points[:, :2].max(axis=0)) / 2
    best: tuple[float, Grasp] | None = None
    for theta in np.deg2rad(np.arange(0, 360, 15)):
        radial = np.array([math.cos(theta), math.sin(theta)])
        xy = centre + BOWL_RIM_RADIUS * radial
        near = np.linalg.norm(points[:, :2] - xy, axis=1) < 0.015
        rim_top = float(points[near, 2].max()) if near.any() else float(points[:, 2].max())
        point = np.array([*xy, rim_top - BOWL_RIM_DEPTH])
        yaw = float(theta % math.pi)
        collides = hits_obstacles(point, yaw, obstacles)
        reach_pick = float(np.linalg.norm(xy - base_xy))
        reach_place = float(np.linalg.norm(place_xy + (xy - body_pos[:2]) - base_xy))
        score = (
            0.01 * abs(yaw - math.pi / 2)
            + 0.3 * max(0.0, reach_pick - 0.75)
            + 0.3 * (reach_pick + reach_place)
            + (10.0 if collides else 0.0)
        )
        if best is None or score < best[0]:
            best = (score, Grasp(point, yaw, True, point - body_pos, collides))
    return best[1]
