"""Whether a from-scratch retrain reproduces a run: its adapter tensors compared with the first run's, bit for bit.

A collapsed run that a retrain of the same seed reproduces exactly is a property of that seed (data order and
initialization), not of nondeterminism; one that does not reproduce points at nondeterministic kernels or at a
difference in how the run was made (an interrupted and resumed run, say).
"""

from __future__ import annotations

from pathlib import Path


def _tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(adapter_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds no .safetensors file; is it an adapter directory?")
    tensors = {}
    for file in files:
        tensors.update({f"{file.name}:{k}": v for k, v in load_file(str(file)).items()})
    return tensors


def compare_adapters(first: str | Path, second: str | Path) -> dict:
    """Compare every tensor of two adapter directories.

    Returns:
        ``{"identical", "tensors", "differing", "missing", "max_abs_diff", "first", "second"}``: identical is True
        only when both hold the same tensor names and every tensor is bitwise equal (same dtype and shape).
    """
    import torch

    a, b = _tensors(Path(first)), _tensors(Path(second))
    missing = sorted(set(a) ^ set(b))
    differing, max_diff = [], 0.0
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            differing.append(name)
            max_diff = float("inf")
        elif not torch.equal(x, y):
            differing.append(name)
            max_diff = max(max_diff, float((x.double() - y.double()).abs().max()))
    return {
        "identical": not missing and not differing,
        "tensors": len(set(a) & set(b)),
        "differing": len(differing),
        "differing_names": differing[:20],
        "missing": missing,
        "max_abs_diff": max_diff,
        "first": str(first),
        "second": str(second),
    }
