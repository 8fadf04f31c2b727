"""Evaluate a policy on LIBERO with the upstream OpenVLA protocol, batched over parallel env workers.

Examples (from the repository root)::

    # one suite, 8 simulator workers, videos of failures
    python eval/run_libero_eval.py --checkpoint runs/openvla-libero-spatial --suites '[libero_spatial]' \
        --num_workers 8 --output_dir runs/eval/spatial

    # base model + a StaMo/LoRA adapter, 4-bit, all four standard suites
    python eval/run_libero_eval.py --checkpoint /models/openvla-7b --adapter_dir runs/stamo/adapter \
        --quantization 4bit --suites '[libero_spatial,libero_object,libero_goal,libero_10]'

    # the scripted privileged-state oracle (checks the harness itself)
    python eval/run_libero_eval.py --policy scripted --suites '[libero_object]' --num_trials_per_task 5

    # several GPUs: each rank takes a round-robin share of the episodes; rank 0 writes the summary
    torchrun --nproc-per-node 4 eval/run_libero_eval.py --checkpoint ... --num_workers 4

    # a YAML preset under stamo_vla/presets/eval_<name>.yaml, plus overrides
    python eval/run_libero_eval.py --config tiny --output_dir /tmp/eval

Rerunning the same command with the same --output_dir resumes an interrupted evaluation. Every option
is documented by ``--help``; the logic lives in ``stamo_vla.libero.evaluation``.
"""

from __future__ import annotations

import sys

from stamo_vla.configs import parse_config
from stamo_vla.libero.evaluation import RenderingError, evaluate
from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.results import SUMMARY_JSON, summary_markdown
from stamo_vla.optional import MissingDependencyError

# errors whose message tells the user what to do: printed alone, without a traceback
USER_ERRORS = (ValueError, FileNotFoundError, MissingDependencyError, RenderingError)


def _user_error(err: BaseException) -> BaseException | None:
    """The user-facing error in `err`'s cause chain (draccus wraps __post_init__ errors), if any."""
    while err is not None:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None


def _report(err: Exception) -> int:
    user = _user_error(err)
    if user is None:
        raise err
    print(f"run_libero_eval: error: {user}", file=sys.stderr)
    return 3 if isinstance(user, RenderingError) else 2


def main(argv: list[str] | None = None) -> int:
    """Parse the config, run (or resume) the evaluation, print the summary table; returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(EvalConfig, argv, prefix="eval_")
    except Exception as err:
        return _report(err)
    try:
        summary = evaluate(cfg)
    except KeyboardInterrupt:
        # finished episodes are already on disk; the same command picks up where this one stopped
        print(
            f"run_libero_eval: interrupted; rerun with --output_dir {cfg.output_dir} to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        return _report(err)
    if summary is not None:
        print(summary_markdown(summary))
        print(f"summary written to {cfg.output_dir}/{SUMMARY_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
