"""Resumable staged runs: each stage is a list of commands whose output is teed to a log, and a finished stage
leaves a mark (``.stages/<name>.json`` with its time and the config) so a rerun skips it.

A stage's time is summed over every call that worked on it: while a stage runs, ``.stages/<name>.elapsed`` is
rewritten every ``HEARTBEAT_S`` seconds, so a call that is interrupted (even killed) still counts, to within that
interval, when a later call finishes the stage.

Stages run their heavy work in subprocesses (the simulator never shares a process with TensorFlow, and a
crash in one stage leaves the driver's state intact); each command resumes its own work when rerun, so an
interrupted stage continues where it stopped.

Every call of a stage appends two lines to ``.stages/calls.jsonl``: when it starts, the git commit of the code
running it (and whether tracked files differ from that commit), and when it ends, its seconds. A run that sets
``allow_mixed_commits = False`` refuses to run a stage from code other than the code that ran its earlier stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stamo_vla.fileio import append_jsonl, directory_lock, read_json, read_jsonl, write_json_atomic

# the folder holding the stamo_vla package in use (a checkout or site-packages): stage commands run
# `python -m stamo_vla.cli ...` and must import the same code as this process
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
# Seconds between two writes of a running stage's elapsed time.
HEARTBEAT_S = 30.0
# Seconds a stopped stage command may take to save its state (a checkpoint) before it is killed.
STOP_GRACE_S = 120.0
# stage calls, one JSON line at each start (commit) and each end (seconds)
CALLS_NAME = "calls.jsonl"


def code_version(root: Path = PACKAGE_ROOT) -> dict:
    """The git commit of the code in use and whether its tracked files differ from it (``dirty``).

    Outside a git checkout (an installed package) the commit is None and the package version is given instead.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"commit": None, "dirty": None, "version": version("stamo-vla")}
        except PackageNotFoundError:
            return {"commit": None, "dirty": None, "version": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def machine() -> dict:
    """The CPU model and core count of this machine (what a stage's wall time was measured on)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform()}


def version_key(code: dict) -> str:
    """One string per code version: the commit, ``+dirty`` when tracked files differed from it."""
    if code.get("commit") is None:
        return f"package {code.get('version')}"
    return code["commit"] + ("+dirty" if code.get("dirty") else "")


class MixedCommitsError(RuntimeError):
    """A stage was asked to run from code other than the code that ran the earlier stages of the run."""

    user_error = True  # the message says what to do: the command line prints it alone


class StageFailed(RuntimeError):
    """A stage command exited with an error; the message holds the tail of its log."""


class StagedRun:
    """Paths, command runner and stage driver shared by the demo and the studies.

    Subclasses define ``STAGES`` (names in order) and a method per stage (``stage_<name>``).
    """

    STAGES: tuple[str, ...] = ()
    NAME = "run"
    # stages whose calls may come from any code (rewriting a report is not a run)
    ANY_COMMIT: tuple[str, ...] = ("report",)
    # False: refuse to run a stage from a commit other than the earlier stages' (`check_commit`)
    allow_mixed_commits = True

    def __init__(self, cfg, out_dir: str | os.PathLike, stages: list[str]):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.stages = stages
        self.marks = self.out / ".stages"

    def run(self, args: list[str], log_name: str, env: dict | None = None) -> None:
        """Run a command with output appended to <out>/logs/<log_name>.log; raise StageFailed with the tail.

        The command runs in this process's working directory, so relative paths mean the same in both.

        Args:
            args: the command and its arguments.
            log_name: the log file's name (without .log).
            env: the environment (None: this process's).
        """
        log_dir = self.out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{log_name}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "TOKENIZERS_PARALLELISM": "false",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {}),
        }
        print("  $ " + " ".join(args), flush=True)
        with open(log, "a") as f:
            returncode = run_child(args, full_env, f)
        if returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise StageFailed(f"stage command failed (exit {returncode}); log {log}:\n{tail}")

    def latest_model(self, run_dir: Path, stage: str) -> Path:
        """``<newest checkpoint of run_dir>/model``; names the stage that makes it when there is none."""
        from stamo_vla.training.checkpoint import find_latest_checkpoint

        ckpt = find_latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint under {run_dir}; run the '{stage}' stage")
        return ckpt / "model"

    def record_command(self, argv: list[str]) -> None:
        """Remember the command line that (re)started this run, for the report (``commands.jsonl``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.out / "commands.jsonl", {"argv": argv, "time": time.strftime("%Y-%m-%d %H:%M:%S")})

    def commands(self) -> list[list[str]]:
        """Every recorded command line of this run, oldest first."""
        return [r["argv"] for r in read_jsonl(self.out / "commands.jsonl")]

    def stage_calls(self) -> list[dict]:
        """Every recorded stage call (start and end lines), oldest first."""
        return read_jsonl(self.marks / CALLS_NAME)

    def check_commit(self, name: str, code: dict) -> None:
        """Refuse (`MixedCommitsError`) to run stage `name` from `code` when earlier stage calls of this run came
        from another version, unless ``allow_mixed_commits``."""
        if self.allow_mixed_commits or name in self.ANY_COMMIT:
            return
        calls = [c for c in self.stage_calls() if "commit" in c and c["stage"] not in self.ANY_COMMIT]
        earlier = {version_key(c) for c in calls}
        recorded = {c["stage"] for c in calls}
        if any(m.stem not in recorded and m.stem not in self.ANY_COMMIT for m in self.marks.glob("*.json")):
            earlier.add("unrecorded (stages finished before commits were recorded)")
        current = version_key(code)
        if earlier and earlier != {current}:
            raise MixedCommitsError(
                f"{self.out}: its stages ran from {sorted(earlier)}, and this code is {current}. A study's numbers "
                "must come from one version of the code: check out that commit (with a clean tree), or start a new "
                "output_dir, or pass --allow_mixed_commits true (the report then says the run is mixed)."
            )

    def stage_fn(self, name: str) -> Callable[[], None]:
        return getattr(self, f"stage_{name}")

    def is_done(self, name: str) -> bool:
        return (self.marks / f"{name}.json").is_file()

    def main(self, always: tuple[str, ...] = ("report",)) -> dict[str, float]:
        """Run the selected stages in order, skipping finished ones (except those in `always`).

        The output directory is locked meanwhile (`directory_lock`): a second driver on it is refused.
        """
        with directory_lock(self.out, self.NAME):
            return self._run_stages(always)

    def _run_stages(self, always: tuple[str, ...]) -> dict[str, float]:
        times: dict[str, float] = {}
        for name in self.stages:
            mark = self.marks / f"{name}.json"
            if mark.is_file() and name not in always:
                times[name] = read_json(mark, "Restore it, or run the study again in a new output folder.")[
                    "seconds"
                ]
                print(f"[{self.NAME}] {name}: done earlier ({times[name]:.0f} s), skipped", flush=True)
                continue
            code = code_version()
            self.check_commit(name, code)
            print(f"[{self.NAME}] {name} ...", flush=True)
            calls = self.marks / CALLS_NAME
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            append_jsonl(calls, {"stage": name, "event": "start", **code, "time": now, "machine": machine()})
            elapsed = self.marks / f"{name}.elapsed"
            earlier = (
                read_json(elapsed, "Restore it, or run the study again in a new output folder.")
                if elapsed.is_file()
                else {"seconds": 0.0, "calls": 0}
            )
            start = time.perf_counter()

            def record(earlier=earlier, start=start, elapsed=elapsed, name=name) -> dict:
                seconds = round(earlier["seconds"] + time.perf_counter() - start, 1)
                rec = {"stage": name, "seconds": seconds, "calls": earlier["calls"] + 1}
                write_json_atomic(elapsed, rec)
                return rec

            ok = False
            try:
                with _Heartbeat(record, HEARTBEAT_S) as beat:
                    self.stage_fn(name)()
                ok = True
            finally:
                seconds = round(time.perf_counter() - start, 1)
                append_jsonl(calls, {"stage": name, "event": "end", "seconds": seconds, "ok": ok})
            rec = beat.last
            times[name] = rec["seconds"]
            config = dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}
            write_json_atomic(mark, {**rec, "config": config})
            elapsed.unlink()
            calls = f" over {rec['calls']} calls" if rec["calls"] > 1 else ""
            print(f"[{self.NAME}] {name}: {times[name]:.0f} s{calls}", flush=True)
        return times


class _Heartbeat:
    """Calls ``fn`` every ``interval`` seconds in a daemon thread while the block runs, and once more on leaving
    (its result is then ``last``)."""

    def __init__(self, fn: Callable[[], object], interval: float):
        self.fn = fn
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.fn()

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.last = self.fn()


# Run a command so that it gets SIGTERM when the process that started it dies, even by SIGKILL (Linux
# PR_SET_PDEATHSIG, kept across exec): a fresh single-threaded interpreter sets it, checks that its parent is
# still the driver (it may have died in between), then becomes the command.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(143); os.execvp(sys.argv[2], sys.argv[2:])"
)


def _dies_with_parent(args: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]


def run_child(args: list[str], env: dict, stdout) -> int:
    """Run a stage command so that it never outlives this driver; returns its exit code.

    The command runs in a process group of its own (with everything it starts: simulator workers, torchrun
    ranks). SIGTERM or Ctrl-C to the driver is passed on to that whole group, which gets `STOP_GRACE_S` to save
    its state (training writes a checkpoint on SIGTERM) before it is killed; the driver then exits with 143
    (130 for Ctrl-C). If the driver itself is killed, the command gets SIGTERM from the kernel (Linux).

    Args:
        args: the command and its arguments.
        env: its environment.
        stdout: the open file its output goes to.
    """
    proc = subprocess.Popen(
        _dies_with_parent(args), env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
    )
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        return proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


class Terminated(SystemExit):
    """The driver got SIGTERM (exit code 143, as a process killed by it)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(128 + signal.SIGTERM)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, then SIGKILL after `STOP_GRACE_S` (and to any it left behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]


def stamo_vla_cli(command: str, *args: str) -> list[str]:
    """A command line running ``stamo-vla <command> ...`` with this interpreter."""
    return python("-m", "stamo_vla.cli", command, *args)


def torchrun(nproc: int, command: str, *args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node <nproc> -m stamo_vla.cli <command> ...`` with this interpreter.

    Args:
        nproc: processes (ranks) to start.
        command: the ``stamo-vla`` command.
        *args: its options.
    """
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return python(*run, "-m", "stamo_vla.cli", command, *args)
