"""Provenance (encoder fingerprint, base-model signature, image augmentation) lives in provenance.json beside the
adapter, not in its config; directories saved when these facts were config fields still load, check and compute
the same."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, merge, save_adapter
from stamo_vla.adapter.configuration_adapter import CONFIG_NAME
from stamo_vla.configs import parse_config
from stamo_vla.evaluation import AdapterPolicyConfig, EvalConfig
from stamo_vla.libero.evaluation_config import recorded_image_aug
from stamo_vla.provenance import LEGACY_FILE, PROVENANCE_NAME, Provenance, read_provenance, write_provenance
from stamo_vla.training import resume_config
from stamo_vla.training.finetune_config import FinetuneConfig
from stamo_vla.training.run_config import load_run_config


def test_the_legacy_file_is_the_adapter_config():
    assert LEGACY_FILE == CONFIG_NAME


def test_provenance_round_trips_and_nothing_recorded_reads_as_empty(tmp_path):
    record = Provenance(stamo_fingerprint="abc", base_model={"model_type": "x"}, trained_with_image_aug=False)
    path = write_provenance(tmp_path, record)
    assert path == tmp_path / PROVENANCE_NAME and json.loads(path.read_text())["format_version"] == 1
    assert read_provenance(tmp_path) == record and read_provenance(tmp_path).source == path
    assert read_provenance(tmp_path / "elsewhere") == Provenance()
    path.write_text("{")
    with pytest.raises(ValueError, match=PROVENANCE_NAME):
        read_provenance(tmp_path)


def _to_old_layout(directory, stamo_fingerprint=None) -> dict:
    """Rewrite a saved adapter as the code before provenance.json wrote it: the facts inside its config."""
    facts = json.loads((directory / PROVENANCE_NAME).read_text())
    facts.pop("format_version")
    if stamo_fingerprint is not None:
        facts["stamo_fingerprint"] = stamo_fingerprint
    config = directory / CONFIG_NAME
    config.write_text(json.dumps({**json.loads(config.read_text()), **facts}))
    (directory / PROVENANCE_NAME).unlink()
    return facts


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from stamo_vla.vla import build_tiny

    tmp = tmp_path_factory.mktemp("provenance")
    base, processor = build_tiny(seed=0)
    cfg = StaMoAdapterConfig(target="state", head_width=16, lora_rank=4)
    model = attach(
        base,
        cfg,
        target_shape=(2, 8),
        provenance=Provenance(stamo_fingerprint="f00d", trained_with_image_aug=True),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(model, tmp / "adapter", dataset_statistics=base.norm_stats)
    return model.eval(), processor, tmp / "adapter"


def _predict(model, processor):
    from stamo_vla.vla.processing_openvla import build_prompt

    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    enc = processor([build_prompt("pick up the bowl")], [image])
    return model.predict_action(
        enc["pixel_values"], enc["input_ids"], enc["attention_mask"], return_future_state=True
    )


@pytest.mark.slow
def test_provenance_is_saved_beside_the_config_not_in_it(saved):
    model, _, directory = saved
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert not set(config) & set(Provenance.fields())
    record = read_provenance(directory)
    assert record.source == directory / PROVENANCE_NAME
    assert record.stamo_fingerprint == "f00d" and record.trained_with_image_aug is True
    assert record.base_model == model.provenance.base_model and record.base_model["shape_digest"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["provenance.json", "old config fields"])
def test_both_layouts_load_check_and_predict_the_same(saved, tmp_path, layout):
    from stamo_vla.vla import build_tiny

    model, processor, directory = saved
    adapter = tmp_path / "adapter"
    shutil.copytree(directory, adapter)
    record_file = adapter / PROVENANCE_NAME
    if layout == "old config fields":
        _to_old_layout(adapter)
        record_file = adapter / CONFIG_NAME
    loaded = load_adapter(build_tiny(seed=0)[0], adapter).eval()
    assert loaded.config == model.config and loaded.provenance == model.provenance
    assert loaded.provenance.source == record_file
    expected_actions, expected_state = _predict(model, processor)
    actions, state = _predict(loaded, processor)
    np.testing.assert_array_equal(actions, expected_actions)
    torch.testing.assert_close(state, expected_state)
    # evaluation's center_crop=None follows the record in either layout
    assert recorded_image_aug(str(adapter)) is True
    common = dict(
        policy=AdapterPolicyConfig(checkpoint=str(tmp_path), adapter_dir=str(adapter)),
        suites=["libero_spatial"],
    )
    assert EvalConfig(**common).resolve_center_crop() is True

    # a base-model signature that differs is refused, naming the file that records it
    data = json.loads(record_file.read_text())
    data["base_model"] = {**data["base_model"], "num_parameters": 1}
    record_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="different base model") as err:
        load_adapter(build_tiny(seed=0)[0], adapter)
    assert str(record_file) in str(err.value) and "num_parameters: adapter 1 vs base" in str(err.value)


@pytest.mark.slow
def test_a_merged_checkpoint_keeps_the_record_but_no_base_signature(saved, tmp_path):
    from stamo_vla.vla import build_tiny

    _, _, directory = saved
    model = load_adapter(build_tiny(seed=0)[0], directory)
    merge(model, tmp_path / "merged")
    record = read_provenance(tmp_path / "merged")
    assert record.base_model == {} and record.stamo_fingerprint == "f00d"
    assert recorded_image_aug(str(tmp_path / "merged")) is True


def test_an_old_run_config_with_provenance_fields_still_loads(tmp_path):
    cfg = FinetuneConfig(stamo_path="/x", run_dir=str(tmp_path))
    old = cfg.to_dict()
    old["adapter"].update(
        stamo_fingerprint="f00d", base_model={"model_type": "openvla"}, trained_with_image_aug=True
    )
    old["data"]["target_encoder_fingerprint"] = "f00d"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_run_config(FinetuneConfig, tmp_path / "config.yaml") == cfg
    # and reproduces the run as a --config file
    assert parse_config(FinetuneConfig, ["--config", str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize("old_layout", [False, True])
def test_resume_refuses_an_image_aug_change_the_checkpoint_records(tmp_path, old_layout):
    model_dir = tmp_path / "checkpoints" / "step_2" / "model"
    model_dir.mkdir(parents=True)
    adapter = StaMoAdapterConfig().to_dict()
    if old_layout:
        adapter["trained_with_image_aug"] = True
    else:
        write_provenance(model_dir, Provenance(trained_with_image_aug=True))
    (model_dir / CONFIG_NAME).write_text(json.dumps(adapter))
    same = FinetuneConfig(stamo_path="/x", run_dir=str(tmp_path))  # image_aug=True, as upstream
    assert resume_config.reconcile(same.to_dict(), tmp_path, model_dir.parent, 2, write=False) == {}
    changed = FinetuneConfig(stamo_path="/x", run_dir=str(tmp_path))
    changed.data.image_aug = False
    with pytest.raises(
        resume_config.ResumeConfigError, match="data.image_aug: checkpoint trained with True"
    ) as err:
        resume_config.reconcile(changed.to_dict(), tmp_path, model_dir.parent, 2, write=False)
    assert str(model_dir / (CONFIG_NAME if old_layout else PROVENANCE_NAME)) in str(err.value)
