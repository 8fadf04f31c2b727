"""``python -m eval.bench``: the benchmarks, from a checkout (the same command as ``stamo-vla bench``).

    python -m eval.bench [--quick true] [--only '[adapter,predict_action]'] [--output_dir runs/bench]

The benchmarks live in `stamo_vla.bench`.
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
