"""What may change when a run resumes, and the record of what did: one mechanism for every recipe.

A checkpoint fixes the model it holds, so a resumed config that changes what defines it is refused
(`ResumeConfigError`, naming the field, the recorded and the requested value): the checkpoint would silently
keep training the old model while the run's config said otherwise. Each recipe names its fixed fields
(`reconcile_run`'s ``fixed``): base training the model size, image size, datasets and tokenizer data
(`base_training.RESUME_FIXED`), StaMo pretraining the StaMo model, image source and held-out split
(`stamo_pretrain.RESUME_FIXED`). Fine-tuning (`reconcile`) checks the checkpoint itself: the base checkpoint,
every adapter setting that shapes the trained modules (LoRA rank and targets, head, target kind, horizon, ...),
data.image_aug when the checkpoint's provenance records it, and the StaMo encoder whose states the head learned.

Everything else (lr and schedule, batch size, step counts, logging, data settings) may change, in every recipe
alike (`record_changes`): each change is written to ``<run_dir>/config_changes.jsonl`` with the step it took
effect, and the previous ``config.yaml`` is kept under ``<run_dir>/config_history/`` before the new one is
written (append-only: a copy is never overwritten). The optimizer follows the current config on resume
(`stamo_vla.training.optim.apply_optim_config`), so each recorded change is the change that took effect.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from stamo_vla.adapter.configuration_adapter import CONFIG_NAME, TARGET_SHAPE_FIELDS
from stamo_vla.fileio import append_jsonl, read_json, write_text_atomic
from stamo_vla.provenance import Provenance, read_provenance
from stamo_vla.training.checkpoint import STATE_FILE
from stamo_vla.training.finetune_config import FinetuneConfig

CHANGES_FILE = "config_changes.jsonl"
HISTORY_DIR = "config_history"
FIXED_TOP_LEVEL = ("vla_path", "load_in_4bit")
# how to resume, not what runs: never a recorded change
RUN_LOCATION = ("resume", "run_dir")
# fine-tuning: derived from the adapter fields `check_fixed` checks
IGNORED = (*RUN_LOCATION, "data.horizon", "data.action_chunk")


class ResumeConfigError(ValueError):
    """The resumed config changes something the checkpoint fixes."""


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))  # tuples -> lists, like the YAML
    return flat


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ResumeConfigError(
            f"cannot read the run's previous config {path} ({err}); restore it, or start a new run "
            "(another run_dir) instead of resuming."
        ) from err


def check_fixed(
    cfg_dict: dict,
    checkpoint_adapter: dict,
    previous: dict | None,
    checkpoint: Path,
    provenance: Provenance | None = None,
    stamo_fingerprint: str | None = None,
) -> None:
    """Raise `ResumeConfigError` naming every fixed setting that differs from the checkpoint's.

    Args:
        provenance: the checkpoint model's record (`read_provenance`); its ``trained_with_image_aug`` fixes
            data.image_aug, its ``stamo_fingerprint`` the StaMo encoder whose states are the head's targets.
        stamo_fingerprint: the encoder of this run's targets (stamo_path, or the target caches); None = no
            targets.
    """
    current = _flatten(cfg_dict)
    # the checkpoint's target shape is the record of what its encoder or cache fixed, not a config field
    chosen = {k: v for k, v in checkpoint_adapter.items() if k not in TARGET_SHAPE_FIELDS}
    saved_adapter = FinetuneConfig.upgrade_saved({"adapter": chosen})["adapter"]
    diffs = []
    for key, saved in _flatten(saved_adapter, "adapter.").items():
        if key not in current:
            continue
        if saved != current[key]:
            diffs.append(f"{key}: checkpoint {saved!r}, now {current[key]!r}")
    old = _flatten(previous) if previous else {}
    diffs += [
        f"{key}: checkpoint {old[key]!r}, now {current[key]!r}"
        for key in FIXED_TOP_LEVEL
        if key in old and key in current and old[key] != current[key]
    ]
    recorded = provenance.trained_with_image_aug if provenance is not None else None
    if recorded is not None and "data.image_aug" in current and bool(current["data.image_aug"]) != recorded:
        diffs.append(
            f"data.image_aug: checkpoint trained with {recorded!r} (trained_with_image_aug in "
            f"{provenance.source}), now {current['data.image_aug']!r}"
        )
    diffs += _encoder_change(provenance, stamo_fingerprint)
    refuse(diffs, checkpoint)


def _encoder_change(provenance: Provenance | None, current: str | None) -> list[str]:
    recorded = provenance.stamo_fingerprint if provenance is not None else None
    if recorded is None or current is None or recorded == current:
        return []
    return [
        f"StaMo encoder: the head learned the states of encoder {recorded[:12]} (stamo_fingerprint in "
        f"{provenance.source}), the targets now come from encoder {current[:12]} (stamo_path / target caches)"
    ]


def checkpoint_adapter_config(checkpoint: Path) -> dict:
    """The adapter configuration a training checkpoint saved (``model/stamo_adapter_config.json``; {} if none)."""
    path = checkpoint / "model" / CONFIG_NAME
    if not path.is_file():
        return {}
    return read_json(path, "The checkpoint is damaged: resume from an earlier one, or start a new run_dir.")


def _within(key: str, fields: Sequence[str]) -> bool:
    """Whether dotted `key` is one of `fields` or lies inside one of them."""
    return any(key == name or key.startswith(name + ".") for name in fields)


def allowed_changes(
    cfg_dict: dict, previous: dict, ignored: Sequence[str] = (*IGNORED, "adapter")
) -> dict[str, dict]:
    """{dotted field: {"old", "new"}} for every field that differs (fixed ones are checked beforehand).

    Args:
        cfg_dict: the resumed config, as saved.
        previous: the run's previous config.yaml.
        ignored: fields (with everything inside them) never recorded: how to resume, or checked elsewhere.
    """
    old, new = _flatten(previous), _flatten(cfg_dict)
    changes = {}
    for key in sorted(set(old) | set(new)):
        if _within(key, ignored):
            continue
        if old.get(key) != new.get(key):
            changes[key] = {"old": old.get(key), "new": new.get(key)}
    return changes


def keep_in_history(config_file: Path, history: Path, step: int) -> Path:
    """Copy `config_file` into `history` atomically, under a name no earlier copy holds; returns the copy.

    Append-only: a resume that was killed after recording its change and is resumed again from the same step
    adds ``config_until_step_<step>.<n>.yaml`` beside the first copy, which is never overwritten.

    Args:
        config_file: the run's config.yaml.
        history: the run's config_history/ folder.
        step: the step the kept config ran until.
    """
    text = config_file.read_text()
    stem = f"config_until_step_{step:08d}"
    kept, n = history / f"{stem}.yaml", 0
    while kept.exists():
        if kept.read_text() == text:
            return kept  # this very config is kept already
        n += 1
        kept = history / f"{stem}.{n}.yaml"
    write_text_atomic(kept, text)
    return kept


def _changed_fixed(old: dict, new: dict, fixed: Sequence[str], derived: Sequence[str]) -> list[str]:
    """The flat keys in (or inside) `fixed` that differ; a `derived` key left unset (None) matches any value."""
    keys = sorted(k for k in set(old) | set(new) if _within(k, fixed) and old.get(k) != new.get(k))
    return [k for k in keys if not (k in derived and new.get(k) is None)]


def fixed_changes(
    cfg_dict: dict, previous: dict, fixed: Sequence[str], config_file: Path, derived: Sequence[str] = ()
) -> list[str]:
    """``"<field>: recorded <value> (in <config_file>), requested <value>"`` for every field in (or inside)
    `fixed` that differs.

    Args:
        cfg_dict: the resumed config, as saved.
        previous: the run's previous config.yaml (what the checkpoint was trained with).
        fixed: the fields the recipe's checkpoint fixes (a section fixes every field inside it).
        config_file: the previous config's file, named in each difference.
        derived: fixed fields whose unset value (None) means "derive it": unset, they match what an older
            config.yaml recorded of the derivation.
    """
    old, new = _flatten(previous), _flatten(cfg_dict)
    keys = _changed_fixed(old, new, fixed, derived)
    return [f"{k}: recorded {old.get(k)!r} (in {config_file}), requested {new.get(k)!r}" for k in keys]


def refuse(diffs: list[str], checkpoint: Path, fix: str = "the original values") -> None:
    """Raise `ResumeConfigError` naming every fixed change in `diffs` (nothing when there is none).

    Args:
        diffs: one line per changed fixed setting (`fixed_changes`, `check_fixed`).
        checkpoint: the checkpoint being resumed.
        fix: what to resume with instead, named in the message.
    """
    if diffs:
        raise ResumeConfigError(
            f"resume=true cannot change what checkpoint {checkpoint} fixes: "
            + "; ".join(diffs)
            + f". Resume with {fix}, or start a new run (another run_dir) for the new model."
        )


def previous_config(run_dir: Path, config_cls: type) -> dict | None:
    """The run's previous config.yaml under the current field names (`config_cls.upgrade_saved`); None if none."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return None
    return config_cls.upgrade_saved(_load_yaml(config_file), run_dir)


def record_changes(
    cfg_dict: dict, previous: dict, run_dir: Path, step: int, ignored: Sequence[str], write: bool = True
) -> dict[str, dict]:
    """Record the allowed changes: the previous config.yaml kept in the history, the changes appended to
    ``config_changes.jsonl`` with `step`, and a warning naming them. Every recipe resumes through this.

    Args:
        cfg_dict: the resumed config, as saved.
        previous: the run's previous config.yaml (as `previous_config` reads it).
        run_dir: the run directory.
        step: the step resumed from.
        ignored: fields never recorded (`allowed_changes`).
        write: record and warn (rank 0); other ranks only compute the changes.

    Returns:
        The changes, {dotted field: {"old", "new"}}.
    """
    changes = allowed_changes(cfg_dict, previous, ignored)
    if changes and write:
        kept = keep_in_history(run_dir / "config.yaml", run_dir / HISTORY_DIR, step)
        append_jsonl(run_dir / CHANGES_FILE, {"step": step, "changes": changes})
        described = ", ".join(f"{k}: {v['old']!r} -> {v['new']!r}" for k, v in changes.items())
        warnings.warn(
            f"resuming at step {step} with a changed config ({described}); the changes take effect from "
            f"step {step + 1}, are recorded in {run_dir / CHANGES_FILE}, and the previous config is kept "
            f"as {kept}.",
            stacklevel=3,
        )
    return changes


def reconcile_run(
    cfg: object,
    run_dir: str | os.PathLike,
    checkpoint: Path,
    fixed: Sequence[str],
    write: bool = True,
    derived: Sequence[str] = (),
) -> dict[str, dict]:
    """Refuse a change of the `fixed` fields; record every other change (`record_changes`) at the
    checkpoint's step. Call it before the checkpoint's model is loaded, so that a changed model is refused.

    Base training and StaMo pretraining resume through this; fine-tuning through `reconcile`, which checks the
    checkpoint's adapter and provenance too.

    Args:
        cfg: the resumed config (a draccus dataclass with ``upgrade_saved``, such as a `RunConfig`).
        run_dir: the run directory.
        checkpoint: the checkpoint being resumed (`stamo_vla.training.loop.resume_point`).
        fixed: the fields the checkpoint fixes (a section fixes every field inside it).
        write: record the changes (rank 0).
        derived: fixed fields that, left unset, are derived by the run (`fixed_changes`).

    Returns:
        The allowed changes ({} when the config is unchanged or the run has no previous config.yaml).
    """
    import draccus

    run_dir = Path(run_dir)
    cfg_dict = draccus.encode(cfg)
    previous = previous_config(run_dir, type(cfg))
    if previous is None:
        return {}
    diffs = fixed_changes(cfg_dict, previous, fixed, run_dir / "config.yaml", derived)
    refuse(diffs, checkpoint, _original_flags(cfg_dict, previous, fixed, derived))
    state = read_json(checkpoint / STATE_FILE, "Resume from an earlier checkpoint, or start a new run_dir.")
    step = int(state["step"])
    return record_changes(cfg_dict, previous, run_dir, step, (*RUN_LOCATION, *fixed), write)


def _original_flags(cfg_dict: dict, previous: dict, fixed: Sequence[str], derived: Sequence[str]) -> str:
    """The command-line flags that restore the changed `fixed` fields to what `previous` recorded."""
    old = _flatten(previous)
    keys = _changed_fixed(old, _flatten(cfg_dict), fixed, derived)
    flags = [f"--{k} {v if isinstance(v, str) else json.dumps(v)}" for k in keys for v in [old.get(k)]]
    return f"the original values ({' '.join(flags)})" if flags else "the original values"


def reconcile(
    cfg_dict: dict, run_dir: str | os.PathLike, checkpoint: Path, step: int, write: bool = True
) -> dict[str, dict]:
    """Fine-tuning's resume: refuse fixed changes (`check_fixed`); record allowed ones (`record_changes`).

    With ``write=False`` (ranks other than 0) nothing is written or logged; the decision is the same.

    Args:
        cfg_dict: the resumed config (`FinetuneConfig.to_dict`).
        run_dir: the run directory.
        checkpoint: the checkpoint being resumed.
        step: its step.
        write: record the changes (rank 0).

    Returns:
        The allowed changes ({} when the config is unchanged or the run has no previous config.yaml).
    """
    run_dir = Path(run_dir)
    previous = previous_config(run_dir, FinetuneConfig)  # a config saved before a rename compares as now
    checkpoint_adapter = checkpoint_adapter_config(checkpoint)
    check_fixed(cfg_dict, checkpoint_adapter, previous, checkpoint, read_provenance(checkpoint / "model"))
    if previous is None:
        return {}
    return record_changes(cfg_dict, previous, run_dir, step, (*IGNORED, "adapter"), write)
