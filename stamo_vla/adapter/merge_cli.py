"""`stamo-vla merge`: merge a LoRA + StaMo adapter into its base, offline, on one process.

    stamo-vla merge --vla_path /path/to/openvla-7b --adapter_dir runs/<run>/adapter --output_dir runs/<run>/merged

Streams the base checkpoint shard by shard (`stamo_vla.adapter.streaming_merge`): each base tensor is read from
its safetensors file, the LoRA delta that targets it is added, and the result is written in upstream-sized shards
(``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, at most --max_shard_size each). The
peak memory is about one shard plus the adapter, so openvla-7b merges on a 16 GB machine. Beside the weights
go config.json, the processor files, dataset_statistics.json and the head (stamo_head.safetensors,
stamo_adapter_config.json, provenance.json). Never merge on every rank of a training job (openvla-oft #28, #151):
run this once, afterwards.

--output_dir must be a new or empty directory; an earlier merge output is replaced only with --overwrite true,
and only when it holds nothing but what the merge wrote there (other files are listed and the merge is refused).
An --output_dir that equals, contains or sits inside --vla_path or --adapter_dir is refused.
"""

from __future__ import annotations

import dataclasses
import sys

from stamo_vla.configs import check_choice, parse_config


@dataclasses.dataclass
class MergeConfig:
    """Options of ``stamo-vla merge``."""

    # base checkpoint directory (upstream layout): the model the adapter was trained on
    vla_path: str = ""
    # adapter directory written by fine-tuning (<run_dir>/adapter)
    adapter_dir: str = ""
    # output directory for the merged checkpoint (new, empty, or an earlier merge output with overwrite)
    output_dir: str = ""
    # load the base in this dtype: float32 | bfloat16 | float16 (None: as stored)
    dtype: str | None = None
    # where to merge
    device: str = "cpu"
    # replace output_dir when it holds an earlier merge output (and nothing else)
    overwrite: bool = False
    # the most tensor data per weight shard, as transformers reads it ("5GB" as upstream openvla-7b, "500MB")
    max_shard_size: str = "5GB"

    def __post_init__(self) -> None:
        for name in ("vla_path", "adapter_dir", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give --{name}")
        if self.dtype is not None:
            check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        from stamo_vla.adapter.streaming_merge import shard_bytes

        shard_bytes(self.max_shard_size)  # a clear error for "5XB" or "-1GB"


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla merge``: merge base + adapter into an upstream-layout checkpoint."""
    from stamo_vla.adapter.streaming_merge import merge_checkpoint

    cfg = parse_config(MergeConfig, sys.argv[1:] if argv is None else argv)
    out = merge_checkpoint(
        cfg.vla_path,
        cfg.adapter_dir,
        cfg.output_dir,
        cfg.dtype,
        cfg.device,
        cfg.overwrite,
        cfg.max_shard_size,
    )
    print(f"merged checkpoint written to {out}")
    return 0
