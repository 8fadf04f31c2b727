"""Train the StaMo action decoder: latent motion -> k-step action chunk (the same as ``stamo-vla train-action-decoder``).

    python recipes/train_action_decoder.py --data_root_dir runs/demo/data --dataset_name libero_spatial_no_noops \
        --stamo_path runs/demo/stamo/checkpoints/step_00000300/model --horizon 4 --output_dir runs/action_decoder

Every option: ``stamo-vla train-action-decoder --help`` (`stamo_vla.training.action_decoder_training`).
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-action-decoder", *sys.argv[1:]]))
