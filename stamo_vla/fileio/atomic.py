"""Atomic writes of one file (an interrupted write never replaces the last good file) and the JSON reader
every file we write is read back with."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the write: some writers (safetensors) replace the file with a private one
        follow_umask(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically (`write_text_atomic`).

    Args:
        path: the file to (re)place.
        obj: what to write (JSON-able).
        indent: JSON indentation (None = one line).
    """
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(
    path: str | os.PathLike, fix: str, name: str | None = None, error: type[Exception] = ValueError
) -> Any:
    """Parse a JSON file; an invalid one raises `error` naming the file, the parse error and `fix`.

    Args:
        fix: what the user should do (e.g. "Copy it again from the run that wrote it.").
        name: how the message names the file (default: its path).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise error(
            f"{name or path} is not valid JSON ({err}); it is truncated or was edited. {fix}"
        ) from err


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line durably. A torn last line (crash mid-write) is skipped by `read_jsonl`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read complete JSON lines; an incomplete trailing line from an interrupted write is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file made by `mkstemp` / `mkdtemp` (always private) the mode a plain `open` / `mkdir` gives."""
    path = Path(path)
    mode = 0o777 if path.is_dir() else 0o666
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~_umask())


def follow_umask_tree(directory: str | os.PathLike) -> None:
    """`follow_umask` on a directory and everything under it (third-party writers such as transformers'
    and peft's ``save_pretrained`` leave their safetensors files private whatever the umask)."""
    directory = Path(directory)
    follow_umask(directory)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            if not path.is_symlink():
                follow_umask(path)
