"""Process setup that works as plain ``python`` (one process) and under ``torchrun --nproc-per-node K``.

accelerate picks the backend: gloo for CPU processes, nccl on CUDA. Mixed precision (bf16 autocast) is
used on CUDA by default; CPU runs stay in float32 (exact and reproducible) unless bf16 is asked for.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from stamo_vla.configs import check_choice

if TYPE_CHECKING:
    from accelerate import Accelerator

MIXED_PRECISION = ("auto", "no", "bf16")


def setup_accelerator(mixed_precision: str = "auto", find_unused_parameters: bool = False) -> Accelerator:
    """Create the run's ``Accelerator``.

    Args:
        mixed_precision: ``auto`` (bf16 on CUDA, none on CPU) | ``no`` | ``bf16`` (bf16 autocast on any device:
            on a CPU with ``avx512_bf16`` or AMX it speeds up matmuls, on others it is slower; it changes
            numerics, see the ``train`` benchmark).
        find_unused_parameters: DDP option; needed when some trainable parameters get no gradient (OpenVLA's
            featurizers skip their last block, so LoRA there is unused, as in upstream fine-tuning).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
    cuda = torch.cuda.is_available()
    precision = "bf16" if mixed_precision == "bf16" or (cuda and mixed_precision == "auto") else "no"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    return Accelerator(cpu=not cuda, mixed_precision=precision, kwargs_handlers=handlers)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, CUDA) in types that ``torch.load`` accepts safely."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(obj: object, accelerator: Accelerator | None) -> list:
    """Every rank's `obj`, in rank order (a one-element list without distributed training)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    out: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out
