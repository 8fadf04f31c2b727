"""`stamo-vla` command line: a registry of subcommands, each imported only when it runs.

Every subcommand parses one draccus dataclass config through `stamo_vla.configs.parse_config` (``--config``
presets, ``--field value`` overrides, "did you mean"), so all of them speak one dialect; each module exposes
``main(argv: list[str] | None) -> int | None`` (or ``main_<name>`` when a module serves two commands).

    stamo-vla finetune --config tiny --data.data_root_dir runs/demo/data
    torchrun --nproc-per-node 8 -m stamo_vla.cli finetune --config paper ...

User errors (a bad value, a missing file, a missing optional dependency) are printed as one line without a
traceback; set ``STAMO_VLA_TRACEBACK=1`` to see the traceback anyway.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from stamo_vla.optional import MissingDependencyError

# name -> (module, one-line help). Modules are imported lazily so `stamo-vla --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "finetune": (
        "stamo_vla.training.finetune",
        "LoRA + StaMo fine-tuning of an OpenVLA checkpoint on RLDS data",
    ),
    "pretrain": ("stamo_vla.training.stamo_pretrain", "pretrain a StaMo state model (encoder + DiT decoder)"),
    "eval": ("stamo_vla.evaluation", "evaluate a policy on LIBERO with the upstream protocol"),
    "probe": (
        "stamo_vla.study.probe_run",
        "the latent-action probe (StaMo motion vs baselines) on a dataset",
    ),
    "train-action-decoder": (
        "stamo_vla.training.action_decoder_training",
        "train the action decoder: latent motion -> k-step action chunk",
    ),
    "collect": ("stamo_vla.libero.collect", "collect scripted LIBERO demonstrations into an RLDS dataset"),
    "controller-report": (
        "stamo_vla.libero.collect",
        "measure the scripted controller's success rate per task (no dataset written)",
    ),
    "stats": ("stamo_vla.data.statistics", "compute dataset_statistics.json for an RLDS dataset"),
    "convert": (
        "stamo_vla.data.convert",
        "convert a dataset between RLDS and LeRobotDataset v3.0, both ways",
    ),
    "cache-targets": (
        "stamo_vla.adapter.cache_targets",
        "encode every frame once with the frozen encoder of an auxiliary target",
    ),
    "label-latent-actions": (
        "stamo_vla.data.pseudo_labels",
        "write latent motions for action-free episodes",
    ),
    "merge": (
        "stamo_vla.adapter.merge_cli",
        "merge a LoRA + StaMo adapter into an upstream-layout checkpoint",
    ),
    "viz": ("stamo_vla.viz.cli", "decode states to image sheets: interpolate | transfer | reconstruct"),
    "bench": ("stamo_vla.bench.runner", "run the benchmarks (stamo_vla.bench) and write JSON + markdown"),
    "demo": ("stamo_vla.demo", "run the whole product on the embedded tiny default (make demo)"),
    "stamo-study": (
        "stamo_vla.study.stamo_study",
        "StaMo study: VAE, DINOv2 SSL, StaMo, held-out recon, fair probe",
    ),
    "train-base": (
        "stamo_vla.training.base_training",
        "train a small OpenVLA base policy from scratch (full parameters, token actions)",
    ),
    "heldout": (
        "stamo_vla.study.heldout",
        "held-out action L1 and StaMo target loss of a fine-tuning run",
    ),
    "study": (
        "stamo_vla.study.policy_study",
        "the CPU policy study: a small OpenVLA trained here on LIBERO, StaMo-aux vs plain LoRA",
    ),
}

# errors whose message tells the user what to do (a bad value or path, a missing extra): printed alone.
# Other exception types opt in with a class attribute ``user_error = True`` (and ``exit_code``).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    MissingDependencyError,
)


def user_error(err: BaseException | None) -> BaseException | None:
    """The user-facing error in `err`'s cause chain (draccus wraps ``__post_init__`` errors), if any."""
    while err is not None:
        if isinstance(err, USER_ERRORS) or getattr(err, "user_error", False):
            return err
        err = err.__cause__
    return None


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: stamo-vla <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `stamo-vla <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (2 for a user error, with the message on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"stamo-vla: unknown command '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "main_" + name.replace("-", "_"), None) or module.main
    try:
        result = entry(rest)
    except Exception as err:
        user = user_error(err)
        if user is None or os.environ.get("STAMO_VLA_TRACEBACK"):
            raise
        print(f"stamo-vla {name}: error: {user}", file=sys.stderr)
        return int(getattr(user, "exit_code", 2))
    return int(result or 0) if isinstance(result, int) or result is None else 0


if __name__ == "__main__":
    sys.exit(main())
