"""Preset handling shared by the recipes: named YAML presets, "did you mean", saving the config that ran."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

from stamo_vla.fileio import atomic_path

T = TypeVar("T")

# YAML presets ship inside the package (package data), so `--config tiny` works from a wheel install too.
# Wheels are installed unpacked, so the resource directory is a real directory on disk.
PRESET_DIR = Path(str(resources.files("stamo_vla") / "presets"))


def available_presets(prefix: str = "", directory: Path = PRESET_DIR) -> list[str]:
    """Preset names (file stems) under `directory`, optionally filtered by a prefix such as ``"finetune_"``."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml") if p.stem.startswith(prefix))


def resolve_preset(name_or_path: str | os.PathLike, prefix: str = "", directory: Path = PRESET_DIR) -> Path:
    """Turn a preset name (``tiny``) or a YAML path into a path, with a helpful error when neither exists.

    Args:
        name_or_path: a preset name (``tiny``) or a YAML file.
        prefix: the recipe's preset prefix (``finetune_``).
        directory: where presets live (the package's presets/).
    """
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    candidate = directory / f"{prefix}{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = [n[len(prefix) :] for n in available_presets(prefix, directory)]
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"config: no preset or YAML file '{name_or_path}'.{hint} Available presets: {names}; "
        f"or pass a path to a .yaml file."
    )


def _config_flag(args: list[str], prefix: str) -> tuple[Path | None, list[str]]:
    """(the preset or YAML file ``--config`` names, or None; the other arguments)."""
    for flag in ("--config", "--config_path", "--config-path"):
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                raise ValueError(f"{flag} needs a value: a preset name or a .yaml path")
            return resolve_preset(args[i + 1], prefix), args[:i] + args[i + 2 :]
        eq = [a for a in args if a.startswith(flag + "=")]
        if eq:
            args.remove(eq[0])
            return resolve_preset(eq[0].split("=", 1)[1], prefix), args
    return None, args


def parse_config(config_cls: type[T], args: Sequence[str] | None = None, prefix: str = "") -> T:
    """Parse ``--config NAME_OR_PATH`` plus draccus overrides (``--field value``) into `config_cls`.

    ``--config`` picks a preset under ``stamo_vla/presets/`` (``<prefix><name>.yaml``) or any YAML file;
    every other flag overrides a field of that preset. A run's saved config.yaml from an older stamo_vla is read
    with its old fields mapped (`config_cls.upgrade_saved`), so it reproduces the run.

    Args:
        config_cls: the draccus config dataclass.
        args: the command line (without the program name).
        prefix: the recipe's preset prefix, so ``--config tiny`` reads ``<prefix>tiny.yaml``.
    """
    import draccus

    config_path, args = _config_flag(list(args or []), prefix)
    with _upgraded(config_cls, config_path) as config_path:
        parser = draccus.argparsing.ArgumentParser(
            config_class=config_cls,
            config_path=config_path,
            exit_on_error=False,
            formatter_class=_percent_safe_formatter(),
        )
        try:
            return parser.parse_args(args)
        except draccus.utils.ParsingError as err:
            if isinstance(err, draccus.utils.DecodingError):  # a value that does not parse: names the field
                raise ValueError(f"{err}; give a value of the field's type (see --help)") from err
            # draccus wraps the config's own validation errors; surface the message that names field and value
            cause = err.__cause__
            while cause is not None and not isinstance(cause, ValueError):
                cause = cause.__cause__
            if cause is not None:
                raise ValueError(str(cause)) from err
            raise
        except argparse.ArgumentError as err:  # a value outside a flag's choices (an unregistered ``type``)
            raise ValueError(f"{err}; `--help` lists the choices") from err
        except draccus.utils.DraccusException as err:  # an unknown flag: name it and the closest known one
            known = list(parser.parser._option_string_actions)
            unknown = [
                a.split("=", 1)[0] for a in args if a.startswith("--") and a.split("=", 1)[0] not in known
            ]
            close = [k for k in known if unknown and k.startswith(unknown[0])]
            close = close or (
                difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75) if unknown else []
            )
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{err}.{hint} `--help` lists the fields of {config_cls.__name__}.") from err


@contextlib.contextmanager
def _upgraded(config_cls: type, config_path: Path | None):
    """`config_path`, or a temporary copy with old field names mapped when `config_cls` upgrades saved configs."""
    upgrade = getattr(config_cls, "upgrade_saved", None)
    if config_path is None or upgrade is None:
        yield config_path
        return
    import yaml

    data = yaml.safe_load(Path(config_path).read_text()) or {}
    upgraded = upgrade(data, Path(config_path).parent) if isinstance(data, dict) else data
    if upgraded == data:
        yield config_path
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(config_path).name
        path.write_text(yaml.safe_dump(upgraded, sort_keys=False))
        yield path


def _percent_safe_formatter():
    """draccus' help formatter, with a literal ``%`` in a field comment kept out of argparse's %-formatting."""
    import copy
    import re

    from draccus.help_formatter import SimpleHelpFormatter

    class PercentSafeHelpFormatter(SimpleHelpFormatter):
        def _expand_help(self, action):
            action = copy.copy(action)
            action.help = re.sub(r"%(?!\()", "%%", action.help or "")
            return super()._expand_help(action)

    return PercentSafeHelpFormatter


def save_config(cfg: object, path: str | os.PathLike) -> None:
    """Write the config that ran as YAML (atomically), so the run can be reproduced exactly."""
    import draccus

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        draccus.dump(cfg, f)


def load_config(config_cls: type[T], path: str | os.PathLike) -> T:
    """Load a config saved by `save_config`, one from an older stamo_vla with its old fields mapped
    (`config_cls.upgrade_saved`) included."""
    import draccus

    with _upgraded(config_cls, Path(path)) as upgraded, open(upgraded) as f:
        return draccus.load(config_cls, f)


# Words YAML 1.1 reads as booleans: draccus hands them to a str field as "False" / "True".
_YAML_BOOLEAN_WORDS = {"no": "False", "off": "False", "yes": "True", "on": "True"}


def choice_word(value: object, allowed: Sequence[str]) -> object:
    """`value` as the allowed word it was typed as.

    YAML 1.1 reads ``no``/``off``/``yes``/``on`` as booleans, so ``--mixed_precision no`` reaches a str field as
    "False"; when exactly one allowed word reads so, that word is given back. Any other value is returned as is.
    """
    if str(value) not in ("False", "True"):
        return value
    words = [w for w in allowed if _YAML_BOOLEAN_WORDS.get(w) == str(value)]
    return words[0] if len(words) == 1 else value


def check_choice(field: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ValueError naming the field, the value and the allowed set.

    Args:
        field: the field's name as the user writes it.
        value: the value given.
        allowed: the values allowed.
    """
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not valid; allowed: {list(allowed)}")


def check_positive_int(field: str, value: object, allow_zero: bool = False) -> None:
    """Raise ValueError naming the field and the value unless it is an int >= 1 (>= 0 with `allow_zero`).

    Args:
        field: the field's name as the user writes it.
        value: the value given.
        allow_zero: accept 0 too.
    """
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = "an integer >= 0" if allow_zero else "a positive integer"
        raise ValueError(f"{field}={value!r} must be {allowed}")


def check_range(
    field: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ValueError naming the field, the value and the allowed interval unless `value` is a finite number in
    it (NaN and inf never pass; ``low_open`` / ``high_open`` exclude the bound itself).

    Example: ``check_range("optim.lr", lr, low=0, low_open=True)`` allows (0, inf).

    Args:
        field: the field's dotted name, as the user types it.
        value: the value received.
        low: the lowest value allowed (None: no bound).
        high: the highest value allowed (None: no bound).
        low_open: `low` itself is not allowed.
        high_open: `high` itself is not allowed.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low is None or low_open else '['}{left}, {right}{')' if high is None or high_open else ']'}"
        raise ValueError(f"{field}={value!r} is not valid; it must be a finite number in {interval}")
