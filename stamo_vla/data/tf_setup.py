"""Import tensorflow / tensorflow_datasets lazily, CPU-only and quiet (the only place that imports them)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from stamo_vla.optional import is_available, require

_CONFIGURED = False


def import_tfds(purpose: str, threads: int | None = None) -> tuple[ModuleType, ModuleType]:
    """Return ``(tf, tfds)`` configured for data work: no GPU, terse logging, bounded thread pools.

    Hiding GPUs keeps TF from grabbing accelerator memory that the torch model needs (upstream does the
    same with ``tf.config.set_visible_devices([], "GPU")``). Thread pools can only be set before the TF
    runtime starts, so `threads` only takes effect on the first call in a process.

    Args:
        purpose: what the caller needs TF for, used in the missing-dependency message.
        threads: intra/inter-op thread cap (None leaves TF's default: one per core).
    """
    global _CONFIGURED

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and is_available("triton"):
        # triton's native library segfaults when it is loaded *after* tensorflow (conflicting bundled LLVM
        # symbols; seen with tensorflow-cpu 2.21 + triton 3.8), and torch._dynamo / transformers load it
        # lazily. Loading it first makes both orders safe for the rest of the process.
        importlib.import_module("triton")
    tf = require("tensorflow", purpose)
    tfds = require("tensorflow_datasets", purpose)
    if not _CONFIGURED:
        _CONFIGURED = True
        try:
            tf.config.set_visible_devices([], "GPU")
            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            # the TF runtime was already initialised by someone else; its settings stay as they are
            pass
        tf.get_logger().setLevel("ERROR")
        tfds.disable_progress_bar()
    return tf, tfds
