"""Evaluate a policy on LIBERO with the upstream OpenVLA protocol (the same command as ``stamo-vla eval``).

    python eval/run_libero_eval.py --policy.checkpoint runs/openvla-libero-spatial --suites '[libero_spatial]' \\
        --num_workers 8 --output_dir runs/eval/spatial
    torchrun --nproc-per-node 4 eval/run_libero_eval.py --policy.checkpoint ... --num_workers 4
    python eval/run_libero_eval.py --config tiny --output_dir /tmp/eval      # stamo_vla/presets/eval_tiny.yaml

More examples and every option: ``stamo-vla eval --help`` (`stamo_vla.evaluation`).
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
