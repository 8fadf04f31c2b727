"""Files we write and read: atomic writes, weights, output directories and their locks.

One module per concern; every name is importable from ``stamo_vla.fileio`` as before:

- `stamo_vla.fileio.atomic`: one file written atomically (following the umask), the JSON / JSON-lines readers;
- `stamo_vla.fileio.weights`: safetensors files and shards, their header check, the non-finite checks;
- `stamo_vla.fileio.outputs`: output directories (our marker, what may be replaced, atomic directories, inputs
  kept apart from outputs);
- `stamo_vla.fileio.locks`: one writer per output directory.
"""

from stamo_vla.fileio.atomic import (
    append_jsonl,
    atomic_path,
    follow_umask,
    follow_umask_tree,
    fsync_dir,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from stamo_vla.fileio.locks import (
    LOCK_NAME,
    DirectoryLockedError,
    directory_lock,
    writes_directory,
)
from stamo_vla.fileio.outputs import (
    OUTPUT_MARKER,
    ForeignDirectoryError,
    atomic_dir,
    check_apart,
    check_replaceable,
    dataset_inputs,
    foreign_files,
    output_kind,
    remove_stale_temporaries,
)
from stamo_vla.fileio.weights import (
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    NonFiniteWeightsError,
    check_finite_safetensors,
    check_finite_tensors,
    plan_shards,
    safetensors_problem,
    save_sharded_weights,
    save_weights,
    stream_safetensors,
)

__all__ = [
    "DirectoryLockedError",
    "ForeignDirectoryError",
    "LOCK_NAME",
    "NonFiniteWeightsError",
    "OUTPUT_MARKER",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX",
    "append_jsonl",
    "atomic_dir",
    "atomic_path",
    "check_apart",
    "check_finite_safetensors",
    "check_finite_tensors",
    "check_replaceable",
    "dataset_inputs",
    "directory_lock",
    "follow_umask",
    "follow_umask_tree",
    "foreign_files",
    "fsync_dir",
    "output_kind",
    "plan_shards",
    "read_json",
    "read_jsonl",
    "remove_stale_temporaries",
    "safetensors_problem",
    "save_sharded_weights",
    "save_weights",
    "stream_safetensors",
    "write_json_atomic",
    "write_text_atomic",
    "writes_directory",
]
