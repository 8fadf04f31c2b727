"""The latent-action probe (StaMo paper §4.6) on an RLDS dataset (the same command as ``stamo-vla probe``).

    python eval/latent_action_probe.py --data_root_dir runs/demo/data --dataset_name libero_spatial_no_noops \
        --stamo_path runs/demo/stamo --output_dir runs/demo/probe

Every option: ``stamo-vla probe --help`` (`stamo_vla.study.probe_run`).
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]]))
