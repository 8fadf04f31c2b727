"""Env factory metadata and errors (no simulator stepping; camera-free where an env is built)."""

import numpy as np
import pytest

from stamo_vla.libero import env as E


def test_suite_and_task_metadata():
    assert E.suite_names() == ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]
    assert E.task_count("libero_spatial") == 10 and E.task_count("libero_90") == 90
    assert E.task_instruction("libero_spatial", 0) == (
        "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    states = E.init_states("libero_spatial", 0)
    assert states.shape[0] == 50 and states.ndim == 2 and states.dtype == np.float64
    assert E.DUMMY_ACTION == (0, 0, 0, 0, 0, 0, -1) and E.NUM_STEPS_WAIT == 10


def test_unknown_suite_and_task_list_valid_ones():
    with pytest.raises(ValueError, match=r"Did you mean 'libero_spatial' or .* allowed: \['libero_10'"):
        E.task_count("libero_spatail")
    with pytest.raises(ValueError, match=r"task_id=10 .* valid task ids: 0\.\.9"):
        E.make_env("libero_spatial", 10)
    with pytest.raises(ValueError, match=r"valid task ids: 0\.\.9"):
        E.init_states("libero_object", -1)
    with pytest.raises(ValueError, match="resolution"):
        E.make_env("libero_spatial", 0, resolution=0)


def test_rendering_errors_get_guidance():
    env: dict = {"MUJOCO_GL": "vulkan"}
    with pytest.raises(E.HeadlessRenderingError, match="MUJOCO_GL=egl"):
        E.configure_headless_rendering(env)
    env = {}
    assert E.configure_headless_rendering(env) == "egl" and env["PYOPENGL_PLATFORM"] == "egl"
    err = E.rendering_error(ImportError("Cannot initialize a EGL device display"), "egl")
    assert isinstance(err, E.HeadlessRenderingError)
    assert "libegl1" in str(err) and "libosmesa6" in str(err) and "PYOPENGL_PLATFORM" in str(err)
    assert E.rendering_error(KeyError("plate_1"), "egl") is None  # unrelated errors pass through
