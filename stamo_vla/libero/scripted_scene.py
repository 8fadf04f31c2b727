"""Privileged read access to a LIBERO scene for the scripted controller (poses, collision points, goal).

Reads the robosuite task object behind ``env.env``: MuJoCo model/data arrays, ``objects_dict``,
``fixtures_dict``, ``object_sites_dict``, ``obj_body_id`` and ``parsed_problem["goal_state"]``
(docs/reference/libero_scripted.md §1). Quaternion conventions never matter here: everything is read as
positions and rotation matrices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# MuJoCo geom types (mjtGeom)
_PLANE, _SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX, _MESH = 0, 2, 3, 4, 5, 6, 7
# at most this many vertices per mesh geom (stride-subsampled): extents stay exact enough for planning
_MAX_MESH_POINTS = 400
SUPPORTED_RELATIONS = ("on", "in")


class UnsupportedTaskError(ValueError):
    """The task's goal is not a pick-and-place the scripted controller knows (On / In of one object)."""


@dataclasses.dataclass(frozen=True)
class PlaceGoal:
    """What to move where: ``relation(obj, target)`` from the BDDL goal."""

    relation: str  # "on" or "in"
    obj: str  # movable object to pick
    target: str  # object, fixture or region site to place it on/in
    target_is_site: bool  # True for a region site (In(x, basket_1_contain_region))


def _ring(radius: float, half: float, n: int = 12) -> np.ndarray:
    ang = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)
    return np.concatenate([np.c_[ring, np.full(n, z)] for z in (-half, half)])


def _box(half: np.ndarray) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return signs * half


class Scene:
    """Live view of one LIBERO env's simulator state.

    Args:
        env: a LIBERO ``ControlEnv`` / ``OffScreenRenderEnv`` (``env.env`` is the robosuite task).
    """

    def __init__(self, env: Any):
        self.task = env.env
        self.model = self.task.sim.model._model
        self.data = self.task.sim.data._data
        robot = self.task.robots[0]
        self.eef_site = robot.eef_site_id
        self.base_body = self.model.body("robot0_base").id
        self._local: dict[int, np.ndarray] = {}
        self._geoms: dict[str, np.ndarray] = {}
        names = [self.model.geom(i).name for i in range(self.model.ngeom)]
        self.finger_geoms = [
            {i for i, n in enumerate(names) if n.startswith(f"gripper0_finger{k}") and self._is_collision(i)}
            for k in (1, 2)
        ]

    # ---------------------------------------------------------------- poses
    @property
    def timestep(self) -> int:
        """Env steps since the last reset."""
        return int(self.task.timestep)

    def eef_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.eef_site].copy()

    def eef_mat(self) -> np.ndarray:
        return self.data.site_xmat[self.eef_site].reshape(3, 3).copy()

    def base_xy(self) -> np.ndarray:
        return self.data.xpos[self.base_body][:2].copy()

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.task.obj_body_id[name]].copy()

    def site_box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A region site's centre and world half extents (as LIBERO's ``in_box`` computes them)."""
        site = self.model.site(name).id
        mat = self.data.site_xmat[site].reshape(3, 3)
        half = np.abs(mat @ np.asarray(self.task.object_sites_dict[name].size, dtype=np.float64))
        return self.data.site_xpos[site].copy(), half

    def success(self) -> bool:
        return bool(self.task._check_success())

    # ---------------------------------------------------------------- goal
    def goal(self) -> PlaceGoal:
        """The first On/In predicate whose first argument is a movable object."""
        preds = self.task.parsed_problem["goal_state"]
        for pred in preds:
            if len(pred) == 3 and pred[0] in SUPPORTED_RELATIONS and pred[1] in self.task.objects_dict:
                target = pred[2]
                is_site = target in self.task.object_sites_dict
                if is_site or target in self.task.obj_body_id:
                    return PlaceGoal(pred[0], pred[1], target, is_site)
        raise UnsupportedTaskError(
            f"goal {preds} has no On/In predicate over a movable object; the scripted controller "
            f"supports pick-and-place goals ({SUPPORTED_RELATIONS}) such as libero_spatial and libero_object"
        )

    # ---------------------------------------------------------------- geometry
    def _is_collision(self, geom: int) -> bool:
        return bool(self.model.geom_contype[geom] or self.model.geom_conaffinity[geom])

    def geoms(self, name: str) -> np.ndarray:
        """Collision geom ids of an object/fixture body and all bodies below it."""
        if name not in self._geoms:
            root = self.task.obj_body_id[name]
            parent = self.model.body_parentid
            bodies = set()
            for b in range(self.model.nbody):
                x = b
                while x != 0 and x != root:
                    x = parent[x]
                if x == root:
                    bodies.add(b)
            ids = [
                g
                for g in range(self.model.ngeom)
                if self.model.geom_bodyid[g] in bodies
                and self._is_collision(g)
                and self.model.geom_type[g] != _PLANE
            ]
            self._geoms[name] = np.array(ids, dtype=int)
        return self._geoms[name]

    def _local_points(self, geom: int) -> np.ndarray:
        if geom not in self._local:
            kind, size = self.model.geom_type[geom], self.model.geom_size[geom]
            if kind == _MESH:
                mesh = self.model.geom_dataid[geom]
                start, n = self.model.mesh_vertadr[mesh], self.model.mesh_vertnum[mesh]
                verts = self.model.mesh_vert[start : start + n]
                pts = verts[:: max(1, n // _MAX_MESH_POINTS)]
            elif kind == _BOX:
                pts = _box(size[:3])
            elif kind in (_CYLINDER, _CAPSULE):
                half = size[1] + (size[0] if kind == _CAPSULE else 0.0)
                pts = _ring(size[0], half)
            elif kind in (_SPHERE, _ELLIPSOID):
                half = size[:3] if kind == _ELLIPSOID else np.full(3, size[0])
                pts = np.concatenate([np.diag(half), -np.diag(half)])
            else:
                pts = np.zeros((1, 3))
            self._local[geom] = np.asarray(pts, dtype=np.float64)
        return self._local[geom]

    def points(self, name: str) -> np.ndarray:
        """World-frame collision points (N, 3) of an object or fixture."""
        chunks = [
            self.data.geom_xpos[g] + self._local_points(g) @ self.data.geom_xmat[g].reshape(3, 3).T
            for g in self.geoms(name)
        ]
        return np.concatenate(chunks) if chunks else self.body_pos(name)[None]

    def obstacles(self, exclude: str) -> np.ndarray:
        """Collision points of every object and fixture except `exclude`."""
        names = [n for n in (*self.task.objects_dict, *self.task.fixtures_dict) if n != exclude]
        return np.concatenate([self.points(n) for n in names]) if names else np.zeros((0, 3))

    def fingers_touch(self, name: str) -> bool:
        """Whether both fingers (any finger collision geom) are in contact with the object."""
        obj = self.geoms(name)
        n = self.data.ncon
        g1, g2 = np.asarray(self.data.contact.geom1[:n]), np.asarray(self.data.contact.geom2[:n])
        other = np.concatenate([g2[np.isin(g1, obj)], g1[np.isin(g2, obj)]])
        return all(bool(np.isin(other, list(fingers)).any()) for fingers in self.finger_geoms)
