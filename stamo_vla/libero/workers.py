"""A pool of spawned, TensorFlow-free processes that each own one LIBERO environment.

Why processes: MuJoCo's Mesa renderer segfaults in any process that has imported tensorflow
(docs/reference/environment.md §5b), and the parent (data writing, policies) may need TF. Workers are started
with the ``spawn`` method, so they inherit nothing from the parent but its ``sys.path`` and environment,
and each checks that tensorflow never got imported. Steps run in parallel: the parent sends every
worker its command first and only then collects the replies.

A worker that dies (segfault, OOM kill, ``os.kill``) is never dropped silently: the call that needed it
raises ``WorkerCrashed(slot, spec, exitcode)`` after a fresh process has taken its slot.

Example:
    >>> with EnvWorkerPool(2) as pool:                                      # doctest: +SKIP
    ...     obs = pool.reset({0: EpisodeSpec("libero_spatial", 0, 0), 1: EpisodeSpec("libero_spatial", 0, 1)})
    ...     out = pool.step({0: DUMMY_ACTION, 1: DUMMY_ACTION})             # {slot: (obs, reward, done, info)}
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from stamo_vla.configs import check_positive_int
from stamo_vla.libero.env import CAMERA_OBS_SUFFIX
from stamo_vla.libero.scripted import ScriptedController, ScriptedControllerConfig
from stamo_vla.libero.suites import resolve_suite

# module that provides make_env(suite, task_id, resolution=, camera_obs=) and init_states(suite, task_id)
DEFAULT_ENV_MODULE = "stamo_vla.libero.env"
# observation key `reset` adds for a fresh placement: distance to the nearest benchmark init state of the task
INIT_DISTANCE_KEY = "stamo_vla_init_state_distance"
# how often a waiting parent checks whether a silent worker is still alive
_POLL_S = 0.2


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Which episode a worker runs: a task, its initial state, and the controller's noise seed.

    The initial state is the benchmark's fixed state ``init_index`` unless ``placement_seed`` is set; then it is
    a fresh placement drawn from the task's own reset distribution with that seed (``env.fresh_init_state``),
    and the observation returned by ``reset`` carries ``INIT_DISTANCE_KEY``: its distance to the nearest of the
    task's benchmark states, so callers can prove that no training episode starts from a test state.
    """

    suite: str  # LIBERO suite name, e.g. "libero_spatial"
    task_id: int  # task index inside the suite
    init_index: int  # index into the task's fixed init states (0..49); ignored when placement_seed is set
    noise_seed: int = 0  # seed of the scripted controller's action noise (ignored without scripted=True)
    placement_seed: int | None = None  # None: the fixed init state; an int: a fresh placement with this seed

    def __post_init__(self):
        try:
            resolve_suite(self.suite)
        except ValueError as err:
            raise ValueError(f"EpisodeSpec.suite: {err}") from None
        names = ("task_id", "init_index", "noise_seed") + (
            ("placement_seed",) if self.placement_seed is not None else ()
        )
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"EpisodeSpec.{name}={value!r} must be a non-negative int")


class WorkerCrashed(RuntimeError):
    """A worker process died; its slot already holds a fresh worker with no episode.

    Attributes:
        slot: the pool slot whose process died.
        spec: the episode it was running (None if it had not been reset).
        exitcode: the process exit code (negative: killed by that signal).
        completed: replies of the other slots in the same call, so callers can keep them.
    """

    def __init__(
        self, slot: int, spec: EpisodeSpec | None, exitcode: int | None, completed: dict | None = None
    ):
        self.slot, self.spec, self.exitcode = slot, spec, exitcode
        self.completed = completed or {}
        how = f"exit code {exitcode}"
        if exitcode is not None and exitcode < 0:
            with_name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else "?"
            how += f" (killed by {with_name})"
        super().__init__(
            f"LIBERO env worker in slot {slot} died with {how} while running {spec}. A fresh worker has "
            "replaced it; reset the slot to continue (the episode in progress is lost)."
        )


class WorkerError(RuntimeError):
    """A command raised inside a worker (the worker is still alive); carries the remote traceback."""

    def __init__(
        self,
        slot: int,
        spec: EpisodeSpec | None,
        remote_type: str,
        remote_traceback: str,
        completed: dict | None = None,
    ):
        self.slot, self.spec, self.remote_type = slot, spec, remote_type
        self.completed = completed or {}  # replies of the other slots in the same call
        super().__init__(f"LIBERO env worker {slot} ({spec}) raised {remote_type}:\n{remote_traceback}")


def _assert_no_tensorflow() -> None:
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            f"tensorflow was imported in LIBERO env worker pid {os.getpid()}; MuJoCo rendering segfaults next "
            "to it. Spawned workers re-import the parent's __main__ module: import tensorflow inside "
            "functions there, never at module top level."
        )


class _Worker:
    """State that lives inside the worker process."""

    def __init__(
        self,
        resolution: int,
        scripted: bool,
        camera_obs: bool,
        env_module: str,
        controller_config: dict | None,
    ):
        self.resolution, self.scripted, self.camera_obs = resolution, scripted, camera_obs
        self.controller_config = controller_config or {}
        self.backend = importlib.import_module(env_module)
        self.env: Any = None
        self.task: tuple[str, int] | None = None
        self.controller: Any = None

    def reset(self, spec: EpisodeSpec) -> dict:
        states = self.backend.init_states(spec.suite, spec.task_id)
        if spec.placement_seed is None and not 0 <= spec.init_index < len(states):
            raise ValueError(
                f"init_index={spec.init_index} is out of range: {spec.suite} task {spec.task_id} has "
                f"{len(states)} init states (0..{len(states) - 1})"
            )
        if self.task != (spec.suite, spec.task_id):
            self.close_env()
            self.env = self.backend.make_env(
                spec.suite, spec.task_id, resolution=self.resolution, camera_obs=self.camera_obs
            )
            self.task = (spec.suite, spec.task_id)
            _assert_no_tensorflow()
        distance = None
        if spec.placement_seed is None:
            state = np.asarray(states[spec.init_index])
        else:
            state = self.backend.fresh_init_state(self.env, spec.placement_seed)
            distance = self.backend.distance_to_states(state, states)
        self.env.reset()
        obs = self.env.set_init_state(state)
        if distance is not None:
            obs = {**obs, INIT_DISTANCE_KEY: distance}
        if self.scripted:
            config = ScriptedControllerConfig(**self.controller_config)
            self.controller = ScriptedController(self.env, seed=spec.noise_seed, config=config)
        return obs

    def step(self, action, render: bool = True) -> tuple[dict, float, bool, dict]:
        action = np.asarray(action, dtype=np.float64).tolist()
        skip = self.camera_obs and not render and hasattr(self.backend, "cameras_off")
        with self.backend.cameras_off(self.env) if skip else contextlib.nullcontext():
            obs, reward, done, info = self.env.step(action)
        if skip:  # blank frames never leave the worker
            obs = {k: v for k, v in obs.items() if not k.endswith(CAMERA_OBS_SUFFIX)}
        return obs, float(reward), bool(done), dict(info)

    def scripted_action(self) -> np.ndarray:
        if self.controller is None:
            raise RuntimeError("scripted actions need EnvWorkerPool(scripted=True) and a reset first")
        return self.controller.act()

    def scripted_step(self) -> tuple[np.ndarray, dict, float, bool, dict]:
        action = self.scripted_action()
        obs, reward, done, info = self.step(action)
        info.update(self.controller.status())
        return action, obs, reward, done, info

    def close_env(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env, self.task, self.controller = None, None, None


def _worker_main(
    conn, resolution: int, scripted: bool, camera_obs: bool, env_module: str, controller_config: dict | None
) -> None:
    _assert_no_tensorflow()
    worker = _Worker(resolution, scripted, camera_obs, env_module, controller_config)
    handlers = {
        "reset": worker.reset,
        "step": worker.step,
        "scripted_action": worker.scripted_action,
        "scripted_step": worker.scripted_step,
    }
    while True:
        try:
            cmd, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if cmd == "close":
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", handlers[cmd](*args)))
        except Exception as err:  # reported to the parent, which re-raises it there
            bad_input = isinstance(err, ValueError)
            conn.send(("error", (type(err).__name__, str(err), traceback.format_exc(), bad_input)))
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: robosuite's EGL context destructors print harmless tracebacks there
    os._exit(0)


class EnvWorkerPool:
    """``num_workers`` spawned processes, one LIBERO env each, addressed by slot 0..num_workers-1.

    Each worker keeps its env across episodes of the same task (``reset`` + ``set_init_state``) and
    rebuilds it when the task changes. ``reset`` does not run the wait steps; callers step
    ``DUMMY_ACTION`` ``NUM_STEPS_WAIT`` times, as upstream evaluation does.

    Args:
        num_workers: number of processes (one env each).
        resolution: camera side in pixels (upstream 256).
        scripted: also run a ``ScriptedController`` in each worker (``scripted_actions``/``scripted_step``).
        camera_obs: False builds camera-free envs (faster; observations carry no images).
        env_module: module providing ``make_env`` and ``init_states`` (tests pass a fake).
        timeout_s: a worker silent for longer than this during one command is killed and reported as
            crashed; None waits forever.
        controller_config: keyword arguments of ``ScriptedControllerConfig`` (e.g. ``{"noise_std": 0.0}``).
    """

    def __init__(
        self,
        num_workers: int,
        resolution: int = 256,
        scripted: bool = False,
        camera_obs: bool = True,
        env_module: str = DEFAULT_ENV_MODULE,
        timeout_s: float | None = None,
        controller_config: dict | None = None,
    ):
        check_positive_int("num_workers", num_workers)
        check_positive_int("resolution", resolution)
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive or None")
        if controller_config:  # fail here, not inside every worker
            try:
                ScriptedControllerConfig(**controller_config)
            except TypeError as err:
                raise ValueError(f"controller_config={controller_config!r}: {err}") from err
        self._ctx = mp.get_context("spawn")
        self._args = (resolution, scripted, camera_obs, env_module, dict(controller_config or {}))
        self.scripted = scripted
        self.timeout_s = timeout_s
        self._procs: list[Any] = [None] * num_workers
        self._conns: list[Any] = [None] * num_workers
        self._specs: list[EpisodeSpec | None] = [None] * num_workers
        self._closed = False
        for slot in range(num_workers):
            self._start(slot)

    # ----------------------------------------------------------------- lifecycle
    def _start(self, slot: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker_main, args=(child_conn, *self._args), name=f"libero-worker-{slot}", daemon=True
        )
        proc.start()
        child_conn.close()  # so the parent sees EOF when the child dies
        self._procs[slot], self._conns[slot], self._specs[slot] = proc, parent_conn, None

    def _replace(self, slot: int) -> int | None:
        proc = self._procs[slot]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        exitcode = proc.exitcode
        self._conns[slot].close()
        self._start(slot)
        return exitcode

    @property
    def num_workers(self) -> int:
        return len(self._procs)

    def pid(self, slot: int) -> int:
        """Process id of the worker in `slot`."""
        return self._procs[self._check_slot(slot)].pid

    def spec(self, slot: int) -> EpisodeSpec | None:
        """The episode `slot` was last reset to (None for a fresh or replaced worker)."""
        return self._specs[self._check_slot(slot)]

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("close", ()))
        deadline = time.monotonic() + 10
        for conn, proc in zip(self._conns, self._procs):
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            conn.close()

    def __enter__(self) -> EnvWorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # ----------------------------------------------------------------- transport
    def _check_slot(self, slot: int) -> int:
        if (
            isinstance(slot, bool)
            or not isinstance(slot, (int, np.integer))
            or not 0 <= slot < self.num_workers
        ):
            raise ValueError(f"slot={slot!r} is not a worker slot; valid slots: 0..{self.num_workers - 1}")
        return int(slot)

    def _receive(self, slot: int) -> tuple[str, Any] | None:
        """The worker's reply, or None if it died (or stayed silent past timeout_s and was killed)."""
        conn, proc = self._conns[slot], self._procs[slot]
        start = time.monotonic()
        while True:
            if conn.poll(_POLL_S):
                try:
                    return conn.recv()
                except (EOFError, OSError):
                    return None
            if not proc.is_alive() and not conn.poll(0):
                return None
            if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                proc.kill()
                return None

    def _call(self, requests: Mapping[int, tuple[str, tuple]]) -> dict[int, Any]:
        if self._closed:
            raise RuntimeError("EnvWorkerPool is closed")
        slots = [self._check_slot(s) for s in requests]
        sent = []
        for slot in slots:
            try:
                self._conns[slot].send(requests[slot])
                sent.append(slot)
            except (BrokenPipeError, OSError):
                pass
        results, errors, crashed = {}, [], []
        for slot in slots:
            reply = self._receive(slot) if slot in sent else None
            if reply is None:
                crashed.append(slot)
            elif reply[0] == "ok":
                results[slot] = reply[1]
            else:
                errors.append((slot, reply[1]))
        for slot in crashed:
            spec = self._specs[slot]
            exitcode = self._replace(slot)
            crashed[crashed.index(slot)] = (slot, spec, exitcode)
        if crashed:
            slot, spec, exitcode = crashed[0]
            raise WorkerCrashed(slot, spec, exitcode, completed=results)
        if errors:
            slot, (name, message, tb, bad_input) = errors[0]
            if bad_input:  # unknown task, init index out of range, unsupported goal: a ValueError here too
                raise ValueError(f"{message} (raised as {name} in env worker {slot})")
            raise WorkerError(slot, self._specs[slot], name, tb, completed=results)
        return results

    # ----------------------------------------------------------------- API
    def reset(self, specs: Mapping[int, EpisodeSpec]) -> dict[int, dict]:
        """Reset each slot to its episode (``env.reset()`` + ``set_init_state``); returns raw observations."""
        for slot, spec in specs.items():
            if not isinstance(spec, EpisodeSpec):
                raise ValueError(f"reset needs EpisodeSpec values; slot {slot} got {type(spec).__name__}")
        for slot in specs:
            self._specs[self._check_slot(slot)] = None
        try:
            out = self._call({slot: ("reset", (spec,)) for slot, spec in specs.items()})
        except WorkerCrashed as err:
            for slot in err.completed:  # the healthy slots did reset
                self._specs[slot] = specs[slot]
            raise
        for slot, spec in specs.items():
            self._specs[slot] = spec
        return out

    def step(
        self, actions: Mapping[int, Any], render: Mapping[int, bool] | None = None
    ) -> dict[int, tuple[dict, float, bool, dict]]:
        """Step each slot with its 7-D env action, in parallel; returns ``{slot: (obs, reward, done, info)}``.

        Args:
            actions: ``{slot: 7-D env action}``.
            render: ``{slot: False}`` skips the camera rendering of that slot's step (see
                ``stamo_vla.libero.env.cameras_off``): its observation then has no ``*_image`` entries. Slots
                not named, and every slot when None, render as usual.
        """
        render = dict(render or {})
        unknown = sorted(set(render) - set(actions))
        if unknown:
            raise ValueError(
                f"render names slots {unknown} that take no step; stepped slots: {sorted(actions)}"
            )
        requests = {}
        for slot, action in actions.items():
            a = np.asarray(action, dtype=np.float64)
            if a.shape != (7,):
                raise ValueError(f"env action for slot {slot} must have shape (7,); got {a.shape}")
            requests[slot] = ("step", (a, bool(render.get(slot, True))))
        return self._call(requests)

    def scripted_actions(self, slots: Iterable[int]) -> dict[int, np.ndarray]:
        """The scripted controller's next env action for each slot (needs ``scripted=True``)."""
        self._require_scripted()
        return self._call({slot: ("scripted_action", ()) for slot in slots})

    def scripted_step(self, slots: Iterable[int]) -> dict[int, tuple[np.ndarray, dict, float, bool, dict]]:
        """Ask each slot's controller for an action and step it, in one round trip.

        Returns ``{slot: (action, obs, reward, done, info)}``; ``info`` also carries the controller's
        ``phase`` and ``gave_up`` flags.
        """
        self._require_scripted()
        return self._call({slot: ("scripted_step", ()) for slot in slots})

    def _require_scripted(self) -> None:
        if not self.scripted:
            raise RuntimeError(
                "this pool was built with scripted=False; use EnvWorkerPool(..., scripted=True)"
            )
