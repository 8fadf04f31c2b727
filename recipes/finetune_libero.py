"""LoRA + StaMo fine-tuning of an OpenVLA checkpoint on LIBERO RLDS data.

    # CPU, minutes: the embedded tiny model on a dataset collected with `stamo-vla collect`
    python recipes/finetune_libero.py --config tiny --data.data_root_dir runs/demo/data

    # paper scale (upstream LIBERO recipe: 8 GPUs x batch 16, lr 5e-4, r=32, image aug)
    torchrun --standalone --nnodes 1 --nproc-per-node 8 recipes/finetune_libero.py --config paper_spatial \\
        --vla_path /path/to/openvla-7b --data.data_root_dir /path/to/modified_libero_rlds \\
        --stamo_path /path/to/stamo

    # resume the newest checkpoint of the same run
    torchrun ... recipes/finetune_libero.py --config paper_spatial ... --resume true

Presets live in stamo_vla/presets/finetune_<name>.yaml; any field can be overridden (`--adapter.target none`).
The trained adapter is written to <run_dir>/adapter; merge it offline with `stamo-vla merge`.
"""

import sys

from stamo_vla.configs import parse_config
from stamo_vla.training.finetune import finetune
from stamo_vla.training.finetune_config import FinetuneConfig


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(FinetuneConfig, sys.argv[1:] if argv is None else argv, prefix="finetune_")
    result = finetune(cfg)
    print(f"adapter written to {result.adapter_dir} after {result.step} steps")


if __name__ == "__main__":
    main()
