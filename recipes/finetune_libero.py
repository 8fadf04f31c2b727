"""LoRA + StaMo fine-tuning of an OpenVLA checkpoint on LIBERO RLDS data (the same as ``stamo-vla finetune``).

    # CPU, minutes: the embedded tiny model on a dataset collected with `stamo-vla collect`
    python recipes/finetune_libero.py --config tiny --data.data_root_dir runs/demo/data

    # paper scale (upstream LIBERO recipe: 8 GPUs x batch 16, lr 5e-4, r=32, image aug)
    torchrun --standalone --nnodes 1 --nproc-per-node 8 recipes/finetune_libero.py --config paper \\
        --vla_path /path/to/openvla-7b --data.data_root_dir /path/to/modified_libero_rlds \\
        --stamo_path /path/to/stamo

    # resume the newest checkpoint of the same run
    torchrun ... recipes/finetune_libero.py --config paper ... --resume true

    # the same without a checkout
    torchrun --standalone --nnodes 1 --nproc-per-node 8 -m stamo_vla.cli finetune --config paper ...

Presets live in stamo_vla/presets/finetune_<name>.yaml; any field can be overridden (`--adapter.target none`).
The trained adapter is written to <run_dir>/adapter; merge it offline with `stamo-vla merge`.
Every option: ``stamo-vla finetune --help``.
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
