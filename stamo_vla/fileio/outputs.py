"""Output directories: what a command may replace (our marker), atomic directory writes, the umask, and the
rule that an output lies apart from every input."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stamo_vla.fileio.atomic import follow_umask, follow_umask_tree, fsync_dir, write_json_atomic

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

    Args:
        path: the output the command is to write.
        kind: the output kind the command writes.
        overwrite: whether an earlier output of the same kind may be replaced.

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

    Args:
        path: the output directory.
        kind: the output kind recorded in its marker.
        overwrite: whether an earlier output of the same kind may be replaced.
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
        fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
