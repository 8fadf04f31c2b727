"""`stamo-vla merge`: merge a LoRA + StaMo adapter into its base, offline, on one process.

    stamo-vla merge --base /path/to/openvla-7b --adapter runs/<run>/adapter --out runs/<run>/merged

Loads the base on CPU by default (a 7B model needs ~15 GB of host RAM in bf16), merges the LoRA weights and writes
the upstream checkpoint layout (config.json, safetensors shards, processor files, dataset_statistics.json) plus the
head (stamo_head.safetensors, stamo_adapter_config.json). Never merge on every rank of a training job
(openvla-oft #28, #151): run this once, afterwards.

--out must be a new or empty directory; an earlier merge output is replaced only with --overwrite, and an --out
that equals, contains or sits inside --base or --adapter is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def check_out_dir(out_dir: str | Path, inputs: dict[str, str | Path]) -> None:
    """Refuse an output directory that equals, contains or sits inside one of the named input directories."""
    out = Path(out_dir).expanduser().resolve()
    for name, path in inputs.items():
        src = Path(path).expanduser().resolve()
        if out == src or src.is_relative_to(out) or out.is_relative_to(src):
            relation = "is" if out == src else "contains" if src.is_relative_to(out) else "sits inside"
            raise ValueError(
                f"--out {out_dir} {relation} --{name} {path}: writing there would destroy the input. "
                "Choose an output directory outside both inputs (e.g. runs/<run>/merged next to the adapter)."
            )


def merge_checkpoint(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Load base + adapter, merge, and write `out_dir`; returns it.

    Refused before anything is loaded: an `out_dir` that overlaps `base_dir` or `adapter_dir`, and an
    existing `out_dir` that is not an earlier merge output (or is one, without `overwrite`).
    """
    import torch

    from stamo_vla.adapter import load_adapter, merge
    from stamo_vla.adapter.attach import MERGED_KIND
    from stamo_vla.fileio import check_replaceable
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    check_out_dir(out_dir, {"base": base_dir, "adapter": adapter_dir})
    check_replaceable(out_dir, MERGED_KIND, overwrite)
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    base = OpenVLAForActionPrediction.from_pretrained(base_dir, **kwargs).to(device)
    model = load_adapter(base, adapter_dir)
    processor = OpenVLAProcessor.from_pretrained(base_dir)
    return merge(model, out_dir, processor=processor, overwrite=overwrite)


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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out when it holds an earlier merge output"
    )
    args = parser.parse_args(argv)
    try:
        out = merge_checkpoint(args.base, args.adapter, args.out, args.dtype, args.device, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # a message, not a traceback
        parser.error(str(err))
    print(f"merged checkpoint written to {out}")
    return 0
