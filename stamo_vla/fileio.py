"""Atomic file and directory writes: an interrupted write never replaces the last good file."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
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
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_weights(
    tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically, with the mode the umask gives (safetensors alone writes 0600).

    Args:
        tensors: name -> torch tensor (moved to CPU and made contiguous here) or numpy array.
        path: the file to write; a crash mid-write leaves the previous file in place.
        metadata: text metadata for the header (transformers writes ``{"format": "pt"}``).
    """
    import numpy as np

    if tensors and all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    else:
        from safetensors.torch import save_file

        arrays = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)


WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


_SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def stream_safetensors(
    path: str | os.PathLike,
    specs: dict[str, tuple[Any, tuple[int, ...]]],
    tensors: Iterator[tuple[str, Any]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file one tensor at a time (the header comes from `specs`), atomically.

    ``safetensors.torch.save_file`` needs every tensor in memory at once; this writes the same format (8-byte
    header length, JSON header padded to 8 bytes, tensor data in header order), so the peak is one tensor.

    Args:
        path: the file.
        specs: name -> (torch dtype, shape), in the order the tensors come.
        tensors: (name, torch tensor) pairs in that order, each matching its spec.
        metadata: text metadata of the header.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[str(dtype).removeprefix("torch.")],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for expected, (name, tensor) in zip(specs, tensors, strict=True):
            dtype, shape = specs[expected]
            if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"{path}: tensor {name} {tensor.dtype} {tuple(tensor.shape)} does not match the header's "
                    f"{expected} {dtype} {tuple(shape)}"
                )
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def save_sharded_weights(
    directory: str | os.PathLike,
    specs: dict[str, tuple[Any, tuple[int, ...]]],
    produce: Callable[[list[str]], Iterator[tuple[str, Any]]],
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write weights in transformers' sharded layout, one tensor in memory at a time.

    One shard is written as ``model.safetensors``; more as ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (the layout transformers and upstream checkpoints use).

    Args:
        directory: where the files go (normally an `atomic_dir` temporary).
        specs: tensor name -> (torch dtype, shape), in the order the tensors are written.
        produce: called once per shard with its tensor names; yields (name, tensor) in that order.
        max_shard_bytes: the most bytes of tensor data a shard holds.
        metadata: safetensors header metadata of every shard.
    """
    directory = Path(directory)
    sizes = {name: math.prod(shape) * dtype.itemsize for name, (dtype, shape) in specs.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    names = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file, keys in zip(names, shards, strict=True):
        stream_safetensors(directory / file, {k: specs[k] for k in keys}, produce(keys), metadata)
    if len(shards) > 1:
        weight_map = {key: file for file, keys in zip(names, shards, strict=True) for key in keys}
        index = {"metadata": {"total_size": int(sum(sizes.values()))}, "weight_map": weight_map}
        write_json_atomic(directory / WEIGHTS_INDEX, index)
    return [directory / name for name in names]


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
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


OUTPUT_MARKER = ".stamo_vla_output.json"


def dataset_inputs(
    option: str, data_root_dir: str | os.PathLike | None, names: list[str] | tuple[str, ...]
) -> dict[str, Path]:
    """The folders of the datasets a command reads, for `check_apart`: an RLDS dataset's version folders
    (``<data_root_dir>/<name>/<x.y.z>``), a LeRobot dataset's root (the folder holding ``meta/info.json``, at
    ``data_root_dir`` or ``<data_root_dir>/<name>``).

    Only the stored data count: a cache or labels written beside them (``<name>/stamo_targets``) are outputs.

    Args:
        option: the option naming the root, for messages (``data.data_root_dir``).
        data_root_dir: folder containing the datasets (None or empty: nothing is read).
        names: the datasets read.
    """
    if not data_root_dir:
        return {}
    found = {}
    for name in names:
        folders = sorted(Path(data_root_dir, name).glob("[0-9]*.[0-9]*.[0-9]*"))
        folders += [
            p
            for p in (Path(data_root_dir), Path(data_root_dir, name))
            if (p / "meta" / "info.json").is_file()
        ]
        found.update({f"{option} ({name})" + (f" [{i}]" if i else ""): p for i, p in enumerate(folders)})
    return found


def check_apart(
    outputs: dict[str, str | os.PathLike | None],
    inputs: dict[str, str | os.PathLike | None],
    additive: bool = False,
) -> None:
    """Refuse an output that equals, contains or sits inside an input: writing there could destroy the input.

    Every command that writes applies this to everything it reads. Paths are compared after resolving symlinks;
    None or empty paths, and inputs that do not exist here (a Hub id), are skipped.

    Args:
        outputs: option name (as the user types it, without ``--``) -> the path written.
        inputs: option name -> a path read.
        additive: the command only adds its own files under its output folder and never replaces or deletes
            it (evaluation results): an output inside an input, or around one, is fine; the same folder is not.

    Raises:
        ValueError: naming both options, both paths and how they overlap.
    """
    for out_name, out_path in outputs.items():
        if not out_path:
            continue
        out = Path(out_path).expanduser().resolve()
        for name, path in inputs.items():
            if not path or not (Path(path).expanduser().exists() or Path(path).is_symlink()):
                continue
            src = Path(path).expanduser().resolve()
            overlaps = out == src or (not additive and (src.is_relative_to(out) or out.is_relative_to(src)))
            if overlaps:
                relation = "is" if out == src else "contains" if src.is_relative_to(out) else "sits inside"
                raise ValueError(
                    f"--{out_name} {out_path} {relation} --{name} {path}"
                    + (f" ({src})" if str(src) != str(path) else "")
                    + ": writing there would destroy the input. Choose an output outside every "
                    "input (e.g. a new folder under runs/)."
                )


class ForeignDirectoryError(FileExistsError):
    """An output path holds something we did not write (or wrote as another kind): it is never replaced."""


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


def _read_marker(path: str | os.PathLike) -> dict:
    try:
        marker = json.loads((Path(path) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in a directory's output marker (written by `atomic_dir`), or None."""
    return _read_marker(path).get("kind")


def _files_under(directory: Path) -> list[str]:
    """Relative paths (posix) of the files and links under `directory`, sorted."""
    found = []
    for root, dirs, files in os.walk(directory):
        links = [d for d in dirs if (Path(root) / d).is_symlink()]  # os.walk lists them as dirs, never enters
        for name in files + links:
            found.append((Path(root) / name).relative_to(directory).as_posix())
    return sorted(found)


def foreign_files(path: str | os.PathLike) -> list[str]:
    """Files inside an earlier output that its marker does not list (put there by someone else).

    An output written before markers listed their files (no "files" entry) has none by definition.
    """
    listed = _read_marker(path).get("files")
    if not isinstance(listed, list):
        return []
    ours = set(listed) | {OUTPUT_MARKER}
    return [name for name in _files_under(Path(path)) if name not in ours]


def check_replaceable(path: str | os.PathLike, kind: str, overwrite: bool) -> None:
    """Refuse to replace `path` unless it is missing, empty, or a previous `kind` output and `overwrite`.

    Raises:
        ForeignDirectoryError: `path` is a file, a non-empty directory that is not a `kind` output, or a
            `kind` output holding files its marker does not list (someone else's: they would be deleted).
        FileExistsError: `path` is a previous `kind` output and `overwrite` is False.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise ForeignDirectoryError(
            f"refusing to write a {kind} to '{path}': it exists and is not a directory. Choose another path."
        )
    if not any(path.iterdir()):
        return
    found = output_kind(path)
    if found != kind:
        what = f"a {found} output" if found else "not a stamo_vla output (no marker file)"
        raise ForeignDirectoryError(
            f"refusing to replace '{path}' with a {kind}: it is {what} and would be deleted. "
            "Choose a new or empty output directory, or move that directory away yourself."
        )
    if not overwrite:
        raise FileExistsError(
            f"'{path}' already holds a {kind}; pass overwrite=True (on the command line: --overwrite) to "
            "replace it, or choose another output directory."
        )
    foreign = foreign_files(path)
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise ForeignDirectoryError(
            f"refusing to replace '{path}': besides the {kind} written there it holds files stamo_vla did not "
            f"write, which would be deleted: {shown}. Move them out of '{path}', or choose another output "
            "directory."
        )


def remove_stale_temporaries(parent: str | os.PathLike, pattern: str) -> list[Path]:
    """Delete leftovers of killed `atomic_dir` writes (``pattern`` e.g. ``.step_*.tmp``); returns them."""
    removed = []
    for stale in Path(parent).glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (the old one is removed last).

    Only a missing or empty `path`, or (with `overwrite`) an earlier output of the same `kind`, is ever
    replaced: every output carries a marker file (`OUTPUT_MARKER`) naming its kind, and anything else is
    refused before work starts and again before the swap (`check_replaceable`). A crash before the swap
    leaves the previous `path` intact; a crash during the swap leaves either the old or the new directory
    under `path`, plus a `.old` sibling that the next call cleans up, as it does temporaries of killed
    writes to the same path.
    """
    path = Path(path)
    check_replaceable(path, kind, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{glob.escape(path.name)}.*.tmp")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    follow_umask(tmp)
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        follow_umask_tree(tmp)
        # the files listed are the ones a later overwrite may delete; anything else found there is refused
        write_json_atomic(tmp / OUTPUT_MARKER, {"kind": kind, "format": 1, "files": _files_under(tmp)})
        check_replaceable(path, kind, overwrite)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class NonFiniteWeightsError(ValueError):
    """Weights hold NaN or inf: they are never saved, loaded or merged."""


def check_finite_tensors(tensors: Iterable[tuple[str, Any]], what: str, fix: str) -> None:
    """Raise `NonFiniteWeightsError` naming every floating-point tensor of `tensors` that holds NaN or inf.

    Args:
        tensors: (name, torch tensor) pairs; integer tensors are skipped.
        what: what they are, for the message (e.g. "the adapter to save in runs/x/adapter").
        fix: what the user should do.
    """
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(f"{what}: {len(bad)} tensors hold NaN or inf ({shown}). {fix}")


def check_finite_safetensors(files: Iterable[str | os.PathLike], fix: str) -> None:
    """`check_finite_tensors` over every tensor stored in the safetensors `files`, one tensor in memory at a time;
    the message names the file and the tensors."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            check_finite_tensors(((k, f.get_tensor(k)) for k in f.keys()), f"weight file {file}", fix)  # noqa: SIM118


def safetensors_problem(file: str | os.PathLike) -> str | None:
    """Why a safetensors file is unreadable (truncated, bad header), or None; reads only the header."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{file} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError) as err:
        return f"{file} is not a valid safetensors file ({type(err).__name__}: {err})"
    if size != 8 + n + end:
        return f"{file} is truncated or padded ({size} bytes, its header describes {8 + n + end})"
    return None


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
