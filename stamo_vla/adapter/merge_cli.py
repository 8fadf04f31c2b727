"""`stamo-vla merge`: merge a LoRA + StaMo adapter into its base, offline, on one process.

    stamo-vla merge --base /path/to/openvla-7b --adapter runs/<run>/adapter --out runs/<run>/merged

Loads the base on CPU by default (a 7B model needs ~15 GB of host RAM in bf16), merges the LoRA weights and writes
the upstream checkpoint layout (config.json, safetensors shards, processor files, dataset_statistics.json) plus the
head (stamo_head.safetensors, stamo_adapter_config.json). Never merge on every rank of a training job
(openvla-oft #28, #151): run this once, afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def merge_checkpoint(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    device: str = "cpu",
) -> Path:
    """Load base + adapter, merge, and write `out_dir`; returns it."""
    import torch

    from stamo_vla.adapter import load_adapter, merge
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    base = OpenVLAForActionPrediction.from_pretrained(base_dir, **kwargs).to(device)
    model = load_adapter(base, adapter_dir)
    return merge(model, out_dir, processor=OpenVLAProcessor.from_pretrained(base_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stamo-vla merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base checkpoint directory (upstream layout)")
    parser.add_argument("--adapter", required=True, help="adapter directory written by fine-tuning")
    parser.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="load the base in this dtype (default: as stored)",
    )
    parser.add_argument("--device", default="cpu", help="where to merge (default cpu)")
    args = parser.parse_args(argv)
    out = merge_checkpoint(args.base, args.adapter, args.out, args.dtype, args.device)
    print(f"merged checkpoint written to {out}")
    return 0
