"""Provenance: facts recorded when an adapter is written, kept in ``provenance.json`` beside it, never in a config.

A config holds what a user chooses (and is parsed from the command line); provenance holds what was true when the
weights were trained: the fingerprint of the StaMo encoder whose states the head learned, the signature of the base
model the LoRA weights belong to, and whether the training images were augmented. An adapter directory, a training
checkpoint's ``model/`` and a merged checkpoint each hold it as ``provenance.json`` (written atomically) beside
``stamo_adapter_config.json``. A StaMo target cache records its encoder the same way, in its own ``manifest.json``
(`stamo_vla.data.target_cache`).

Directories written before provenance had its own file kept these facts as fields of ``stamo_adapter_config.json``;
`read_provenance` reads them from there when ``provenance.json`` is absent, so old adapters load, check and
evaluate as before. A directory with neither records nothing (``Provenance().recorded`` is False): what it was
trained from is unknown, so loading it warns that the base cannot be checked and evaluation asks for an explicit
``--center_crop`` instead of guessing. Every fact read is type-checked (a string ``"false"`` is not a bool).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.fileio import read_json, write_json_atomic

PROVENANCE_NAME = "provenance.json"
# the adapter config (`stamo_vla.adapter.configuration_adapter.CONFIG_NAME`) that held these facts before
LEGACY_FILE = "stamo_adapter_config.json"
FORMAT_VERSION = 1


@dataclass
class Provenance:
    """What an adapter was trained from (recorded, never chosen)."""

    # Fingerprint of the StaMo encoder whose states the head was trained on (None = no encoder / not recorded).
    stamo_fingerprint: str | None = None
    # Signature of the base model (model_type, hidden_size, num_parameters, shape_digest, and weight_digest: a hash
    # of weights sampled across the model; `stamo_vla.adapter.attach.base_signature`); {} = not recorded, and then
    # not checked when the adapter is loaded. Keys an older signature lacks are not checked.
    base_model: dict = field(default_factory=dict)
    # Whether the training images were augmented (random crop + colour jitter); evaluation center-crops by default
    # exactly when this is true (None = not recorded).
    trained_with_image_aug: bool | None = None
    # The file these facts were read from (None = not read from disk); not written.
    source: Path | None = field(default=None, compare=False, repr=False)

    @property
    def recorded(self) -> bool:
        """Whether these facts were read from a file (False: the directory records nothing, all unknown)."""
        return self.source is not None

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The recorded facts (what `to_dict` writes, and what older adapter configs held as fields)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "source")

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.fields()}

    @classmethod
    def from_dict(cls, data: dict, source: Path | None = None) -> Provenance:
        """The facts of `data` (a provenance.json, or an older adapter config holding them among its fields).

        Raises:
            ValueError: a fact has the wrong type (names `source`, the field, the value and what is allowed).
        """
        facts = {name: data[name] for name in cls.fields() if name in data}
        for name, value in facts.items():
            types, allowed = _FACT_TYPES[name]
            if value is not None and not isinstance(value, types):
                raise ValueError(
                    f"{source or 'provenance'}: field '{name}' is {value!r} ({type(value).__name__}); expected "
                    f"{allowed}. The file was edited or damaged: copy it again from the run that wrote it."
                )
        facts["base_model"] = facts.get("base_model") or {}
        return cls(**facts, source=source)


# the JSON type each recorded fact must have (None = not recorded is always allowed)
_FACT_TYPES = {
    "stamo_fingerprint": ((str,), "a string or null"),
    "base_model": ((dict,), "an object (the base signature) or null"),
    "trained_with_image_aug": ((bool,), "true, false or null (a JSON boolean, not a string)"),
}


def write_provenance(directory: str | Path, provenance: Provenance) -> Path:
    """Write ``<directory>/provenance.json`` atomically; returns its path."""
    path = Path(directory) / PROVENANCE_NAME
    write_json_atomic(path, {"format_version": FORMAT_VERSION, **provenance.to_dict()})
    return path


def _read_json(path: Path) -> dict:
    data = read_json(path, "Copy it again from the run that wrote it.")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, not a JSON object; copy it again from the run")
    return data


def read_provenance(directory: str | Path) -> Provenance:
    """The provenance of an adapter / checkpoint directory: ``provenance.json``, else the facts an older
    ``stamo_adapter_config.json`` holds, else nothing recorded (``Provenance()``).

    Raises:
        ValueError: ``provenance.json`` is not valid JSON, or is from a newer stamo_vla.
    """
    directory = Path(directory)
    path = directory / PROVENANCE_NAME
    if path.is_file():
        data = _read_json(path)
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{path}: field 'format_version' is {version!r}; expected an integer (1).")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version={version}, newer than this stamo_vla reads ({FORMAT_VERSION}); "
                "upgrade stamo_vla."
            )
        return Provenance.from_dict(data, source=path)
    legacy = directory / LEGACY_FILE
    if legacy.is_file():
        data = _read_json(legacy)
        if set(data) & set(Provenance.fields()):  # a config of today holds none of the facts
            return Provenance.from_dict(data, source=legacy)
    return Provenance()
