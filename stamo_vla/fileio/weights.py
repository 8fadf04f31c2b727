"""Weight files: safetensors writes (one file or shards under an index, streamed tensor by tensor), their
header check, and the non-finite check every saved or loaded weight passes."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from stamo_vla.fileio.atomic import atomic_path, write_json_atomic


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
