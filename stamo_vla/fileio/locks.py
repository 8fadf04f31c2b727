"""One writer per output directory: an ``fcntl.flock`` held while a command writes, and the decorator commands
use to take it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stamo_vla.fileio.outputs import check_apart

LOCK_NAME = ".stamo_vla.lock"


class DirectoryLockedError(RuntimeError):
    """Another process is writing the directory (it holds its lock)."""

    user_error = True  # the CLI prints the message alone


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on the directory `path` (created if missing) while the block runs.

    The lock is an ``fcntl.flock`` on ``<path>/.stamo_vla.lock``, which records the holder (pid, host, command,
    start time). The kernel releases it when the holder exits, even on ``kill -9``, so a stale file never blocks.

    Raises:
        DirectoryLockedError: another process holds the lock; the message names it.
    """
    import fcntl

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_file = path / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "{}"
            raise DirectoryLockedError(
                f"'{path}' is being written by another process ({holder}, lock file {lock_file}); two writers "
                "would corrupt each other. Wait for it to finish or stop it, or choose another output directory."
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        record["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def writes_directory(
    command: str,
    option: str,
    directory: Callable[[Any], str | os.PathLike],
    inputs: Callable[[Any], dict[str, str | os.PathLike | None]] | None = None,
) -> Callable:
    """Decorate ``fn(cfg, ...)``, a command writing the directory ``directory(cfg)``: refuse it when it overlaps
    an input (`check_apart` over ``inputs(cfg)``), then run under its `directory_lock`.

    Under torchrun only rank 0 (``RANK`` unset or 0) takes the lock: the other ranks of the same job write
    nothing of their own.

    Args:
        command: the command's name, recorded in the lock file.
        option: the option that names the directory (``run_dir``), as error messages call it.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def locked(cfg, *args, **kwargs):
            path = directory(cfg)
            check_apart({option: path}, inputs(cfg) if inputs is not None else {})
            if int(os.environ.get("RANK", "0")) != 0:
                return fn(cfg, *args, **kwargs)
            with directory_lock(path, command):
                return fn(cfg, *args, **kwargs)

        return locked

    return wrap
