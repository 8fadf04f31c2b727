"""`stamo-vla` command line: a registry of subcommands, each imported only when it runs.

Every subcommand module exposes ``main(argv: list[str] | None) -> int | None``.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# name -> (module, one-line help). Modules are imported lazily so `stamo-vla --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("stamo_vla.libero.collect", "collect scripted LIBERO demonstrations into an RLDS dataset"),
    "controller-report": (
        "stamo_vla.libero.collect",
        "measure the scripted controller's success rate per task (no dataset written)",
    ),
    "stats": ("stamo_vla.data.statistics", "compute dataset_statistics.json for an RLDS dataset"),
    "cache-targets": ("stamo_vla.data.target_cache", "encode every frame once with a frozen StaMo encoder"),
    "label-latent-actions": (
        "stamo_vla.stamo.pseudo_labels",
        "write latent motions for action-free episodes",
    ),
    "merge": (
        "stamo_vla.adapter.merge_cli",
        "merge a LoRA + StaMo adapter into an upstream-layout checkpoint",
    ),
    "viz": ("stamo_vla.viz.cli", "decode states to image sheets: interpolate | transfer | reconstruct"),
    "bench": ("eval.bench.__main__", "run every benchmark under eval/bench/ and write JSON + markdown"),
    "demo": ("stamo_vla.demo", "run the whole product on the embedded tiny default (make demo)"),
    "stamo-study": (
        "stamo_vla.study.stamo_study",
        "StaMo study: VAE, DINOv2 SSL, StaMo, held-out recon, fair probe",
    ),
    "train-base": (
        "stamo_vla.training.base_training",
        "train a small OpenVLA base policy from scratch (full parameters, token actions)",
    ),
    "study": (
        "stamo_vla.study.policy_study",
        "the CPU policy study: a small OpenVLA trained here on LIBERO, StaMo-aux vs plain LoRA",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: stamo-vla <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `stamo-vla <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
    result = entry(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
