"""Processes and concurrency: stage commands never outlive their driver; a second writer of a run directory is
refused while the first holds its lock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stamo_vla import cli, fileio

# A staged driver (the demo's and the studies' machinery) whose one stage starts a command that starts a
# grandchild and records both pids, then sleeps.
DRIVER = textwrap.dedent(
    """
    import sys
    from stamo_vla.study.stages import StagedRun, python

    CHILD = (
        "import os, subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "open(sys.argv[1], 'w').write(f'{os.getpid()} {g.pid}'); time.sleep(600)"
    )

    class Sleepy(StagedRun):
        STAGES = ("work",)
        NAME = "sleepy"

        def stage_work(self):
            self.run(python("-c", CHILD, sys.argv[2]), "work")

    Sleepy(None, sys.argv[1], ["work"]).main()
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


def _start_driver(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(pids)], env=env)
    deadline = time.monotonic() + 60
    while not (pids.is_file() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child, grandchild = map(int, pids.read_text().split())
    assert _alive(child) and _alive(grandchild)
    return driver, child, grandchild


def _gone(*pids: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")
def test_sigterm_to_a_study_driver_leaves_no_child_running(tmp_path):
    driver, child, grandchild = _start_driver(tmp_path)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 143
    assert _gone(child, grandchild)
    # the stage is not marked done, so a rerun resumes it; its time so far is kept
    assert not (tmp_path / "out" / ".stages" / "work.json").exists()
    assert (tmp_path / "out" / ".stages" / "work.elapsed").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
def test_a_killed_driver_takes_its_stage_command_with_it(tmp_path):
    driver, child, grandchild = _start_driver(tmp_path)
    driver.kill()
    driver.wait(timeout=60)
    assert _gone(child)
    with contextlib.suppress(ProcessLookupError):  # what the stage command started is its own to stop
        os.kill(grandchild, signal.SIGKILL)


def test_a_second_writer_of_a_locked_run_directory_is_refused(tmp_path, finetune_argv, capsys):
    run_dir = tmp_path / "runs" / "toy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom stamo_vla.fileio import directory_lock\n"
            "with directory_lock(sys.argv[1], 'finetune'):\n    print('locked', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["finetune", *finetune_argv("--max_steps", "1")]) == 2
        err = capsys.readouterr().err
        assert f"'{run_dir}' is being written by another process" in err
        assert f'"pid": {holder.pid}' in err and '"command": "finetune"' in err
        assert not (run_dir / "config.yaml").exists()  # the refused run wrote nothing
        with (
            pytest.raises(fileio.DirectoryLockedError, match=str(holder.pid)),
            fileio.directory_lock(run_dir, "collect"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with fileio.directory_lock(run_dir, "finetune"):  # released by the kernel when the holder died
        pass
