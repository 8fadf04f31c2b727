"""Grasp geometry of the scripted controller on synthetic point clouds (no simulator)."""

import math

import numpy as np
import pytest

from stamo_vla.libero import scripted_geometry as G


def _box_points(centre, half):
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    return np.asarray(centre) + signs * np.asarray(half)


def _disk_points(centre, radius, height, n=48):
    ang = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ring = np.c_[radius * np.cos(ang), radius * np.sin(ang)]
    pts = [np.c_[ring, np.full(n, z)] for z in (0.0, height)]
    return np.concatenate(pts) + np.asarray(centre)


def test_gripper_down_matrix_is_a_rotation_pointing_down():
    home = G.gripper_down_matrix(math.pi / 2)
    # LIBERO's home grip-site frame: closing axis world +y, approach straight down
    np.testing.assert_allclose(home, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], atol=1e-12)
    for yaw in np.linspace(-3, 3, 7):
        r = G.gripper_down_matrix(yaw)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_rotation_to_axis_angle_round_trip():
    from scipy.spatial.transform import Rotation

    for vec in ([0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [math.pi - 1e-3, 0, 0]):
        rot = Rotation.from_rotvec(vec).as_matrix()
        np.testing.assert_allclose(G.rotation_to_axis_angle(rot), vec, atol=1e-6)
    assert G.wrap_half_turn(math.pi) == pytest.approx(0.0) and G.wrap_half_turn(0.6) == pytest.approx(0.6)


def test_pinch_prefers_home_yaw_and_avoids_a_tall_neighbour():
    obj = _box_points([0.0, 0.0, 0.05], [0.04, 0.02, 0.05])  # long along x, 4 cm wide along y
    grasp = G.plan_pinch(obj, np.array([0.0, 0.0, 0.0]), np.zeros((0, 3)))
    assert grasp.yaw == pytest.approx(math.pi / 2) and not grasp.rim and not grasp.collides
    assert grasp.point[2] == pytest.approx(0.1 - 0.035)  # cans: 3.5 cm below the top
    # a tall thin can where the hand (long along the closing axis, y) would be at the centred grasp
    can = _disk_points([0.035, 0.09, 0.0], 0.01, 0.2)
    moved = G.plan_pinch(obj, np.zeros(3), can)
    assert not moved.collides and (moved.yaw != grasp.yaw or moved.point[0] != grasp.point[0])
    assert not G.hits_obstacles(moved.point, moved.yaw, can)
    assert G.hits_obstacles(grasp.point, grasp.yaw, can)


def test_wide_bowls_get_a_rim_grasp_on_the_side_near_the_robot():
    bowl = _disk_points([0.0, 0.0, 0.9], 0.0535, 0.05)
    assert G.plan_pinch(bowl, np.array([0.0, 0.0, 0.9]), np.zeros((0, 3))) is None  # too wide to pinch
    base_xy = np.array([-0.66, 0.0])
    grasp = G.plan_rim(
        bowl, np.array([0.0, 0.0, 0.9]), np.zeros((0, 3)), base_xy, place_xy=np.array([0.0, 0.0])
    )
    assert grasp.rim
    assert np.linalg.norm(grasp.point[:2]) == pytest.approx(G.BOWL_RIM_RADIUS)
    assert grasp.point[0] < 0  # the wall facing the robot: shortest reach
    assert grasp.point[2] == pytest.approx(0.95 - G.BOWL_RIM_DEPTH)
