"""Provenance that is removed, edited or forged: unknown is never guessed, wrong types are refused, another base of
the same architecture is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from stamo_vla.evaluation import AdapterPolicyConfig, CheckpointPolicyConfig, EvalConfig
from stamo_vla.provenance import PROVENANCE_NAME, read_provenance


@pytest.fixture
def adapter_copy(tiny_adapter_dir, tmp_path):
    path = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, path)
    return path


def _eval_cfg(base_dir, adapter_dir, **extra) -> EvalConfig:
    return EvalConfig(
        policy=AdapterPolicyConfig(checkpoint=str(base_dir), adapter_dir=str(adapter_dir)),
        suites=["libero_spatial"],
        **extra,
    )


@pytest.mark.slow
def test_a_removed_provenance_file_is_unknown_never_guessed(tiny_base_dir, adapter_copy):
    from stamo_vla.adapter import load_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    record = json.loads((adapter_copy / PROVENANCE_NAME).read_text())
    record["trained_with_image_aug"] = False
    (adapter_copy / PROVENANCE_NAME).write_text(json.dumps(record))
    assert _eval_cfg(tiny_base_dir, adapter_copy).resolve_center_crop() is False  # follows the record

    (adapter_copy / PROVENANCE_NAME).unlink()
    with pytest.raises(
        ValueError, match=r"center_crop: .*records no trained_with_image_aug.*--center_crop true"
    ):
        _eval_cfg(tiny_base_dir, adapter_copy).resolve_center_crop()
    assert _eval_cfg(tiny_base_dir, adapter_copy, center_crop=False).resolve_center_crop() is False
    # an upstream checkpoint (no stamo_adapter_config.json) is cropped as upstream's evaluation does
    assert (
        EvalConfig(
            policy=CheckpointPolicyConfig(checkpoint=str(tiny_base_dir)), suites=["libero_spatial"]
        ).resolve_center_crop()
        is True
    )

    base = OpenVLAForActionPrediction.from_pretrained(tiny_base_dir)
    with pytest.warns(UserWarning, match=f"no {PROVENANCE_NAME}.*base model it was trained on is unknown"):
        load_adapter(base, adapter_copy)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("trained_with_image_aug", "false", "true, false or null"),
        ("trained_with_image_aug", 0, "true, false or null"),
        ("base_model", "openvla", "an object"),
        ("stamo_fingerprint", 12, "a string or null"),
        ("format_version", "1", "an integer"),
    ],
)
def test_provenance_fields_of_the_wrong_type_are_refused(tmp_path, field, value, allowed):
    path = tmp_path / PROVENANCE_NAME
    good = {"format_version": 1, "stamo_fingerprint": None, "base_model": {}, "trained_with_image_aug": True}
    path.write_text(json.dumps({**good, field: value}))
    with pytest.raises(
        ValueError, match=f"{PROVENANCE_NAME}: field '{field}' is {value!r}.*expected {allowed}"
    ):
        read_provenance(tmp_path)


@pytest.mark.slow
def test_an_adapter_is_refused_on_another_checkpoint_of_the_same_architecture(tiny_base_dir, adapter_copy):
    import torch

    from stamo_vla.adapter import load_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction, build_tiny

    other = build_tiny(seed=1)[0]  # same config, shapes and parameter count; other weights
    with pytest.raises(
        ValueError, match=r"different base model \(weight_digest: adapter '\w+' vs base '\w+'"
    ):
        load_adapter(other, adapter_copy)
    # the same weights in another dtype are the same base
    load_adapter(
        OpenVLAForActionPrediction.from_pretrained(tiny_base_dir, torch_dtype=torch.bfloat16), adapter_copy
    )

    # a signature recorded before weight_digest existed is checked on what it holds
    record = json.loads((adapter_copy / PROVENANCE_NAME).read_text())
    del record["base_model"]["weight_digest"]
    (adapter_copy / PROVENANCE_NAME).write_text(json.dumps(record))
    assert load_adapter(build_tiny(seed=1)[0], adapter_copy).provenance.base_model == record["base_model"]
