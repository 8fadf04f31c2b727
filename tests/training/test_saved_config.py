"""The saved config.yaml is the config that ran: values the target encoder or cache fixes are recorded with the
adapter, not in the config, and configs saved when they were config fields still load and resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from stamo_vla.adapter.configuration_adapter import (
    CONFIG_NAME,
    TARGET_SHAPE_FIELDS,
    StaMoAdapterConfig,
    saved_target_shape,
)
from stamo_vla.configs import parse_config, save_config
from stamo_vla.training.finetune_config import FinetuneConfig
from stamo_vla.training.resume_config import reconcile
from stamo_vla.training.run_config import load_run_config


def _old_form(config_yaml, num_state_tokens: int = 2, state_dim: int = 1024) -> None:
    """Rewrite a run's config.yaml as runs wrote it while the target shape was an adapter field."""
    data = yaml.safe_load(config_yaml.read_text())
    data["adapter"].update(num_state_tokens=num_state_tokens, state_dim=state_dim)
    config_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def test_the_target_shape_is_no_config_field():
    assert not {f.name for f in dataclasses.fields(StaMoAdapterConfig)} & set(TARGET_SHAPE_FIELDS)
    with pytest.raises(ValueError, match="adapter.state_dim"):
        parse_config(FinetuneConfig, ["--stamo_path", "/x", "--adapter.state_dim", "64"])


def test_an_old_config_yaml_with_the_target_shape_loads_with_a_note_and_resumes_unchanged(tmp_path):
    cfg = FinetuneConfig(vla_path="tiny", stamo_path="s", run_dir=str(tmp_path), save_steps=7)
    save_config(cfg, tmp_path / "config.yaml")
    _old_form(tmp_path / "config.yaml")
    with pytest.warns(FutureWarning, match=r"config.yaml holds adapter.num_state_tokens, adapter.state_dim"):
        loaded = load_run_config(FinetuneConfig, tmp_path / "config.yaml")
    assert loaded.to_dict() == cfg.to_dict()
    with pytest.warns(FutureWarning, match="They are ignored; remove them from the file"):
        parsed = parse_config(FinetuneConfig, ["--config_path", str(tmp_path / "config.yaml")])
    assert parsed.to_dict() == cfg.to_dict()
    # a checkpoint records the shape its encoder fixed (here 2 x 64, unlike the old config's 1024)
    model_dir = tmp_path / "checkpoints" / "step_00000003" / "model"
    model_dir.mkdir(parents=True)
    cfg.adapter.save(model_dir, target_shape=(2, 64))
    assert saved_target_shape(model_dir) == (2, 64)
    with pytest.warns(FutureWarning):
        changes = reconcile(cfg.to_dict(), tmp_path, model_dir.parent, step=3)
    assert changes == {} and not (tmp_path / "config_changes.jsonl").exists()


def test_a_recorded_target_shape_that_is_not_a_positive_integer_is_named(tmp_path):
    StaMoAdapterConfig(target="state").save(tmp_path, target_shape=(2, 8))
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**data, "state_dim": "8"}))
    with pytest.raises(ValueError, match=r"stamo_adapter_config.json: field 'state_dim' is '8'"):
        saved_target_shape(tmp_path)


@pytest.mark.slow
def test_the_config_yaml_of_a_finished_run_reproduces_it_and_an_old_form_resumes(
    tmp_path, tiny_finetune_cfg, tiny_stamo_dir
):
    from stamo_vla.stamo import StaMoEncoder
    from stamo_vla.training.finetune import finetune, load_metrics

    overrides = [
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--log_steps",
        "1",
        "--stamo_path",
        str(tiny_stamo_dir),
    ]
    cfg = tiny_finetune_cfg(tmp_path / "run", *overrides)
    chosen = cfg.to_dict()
    result = finetune(cfg)
    assert cfg.to_dict() == chosen  # the run changes nothing in the config it was given
    config_yaml = result.run_dir / "config.yaml"
    assert not set(yaml.safe_load(config_yaml.read_text())["adapter"]) & set(TARGET_SHAPE_FIELDS)
    assert parse_config(FinetuneConfig, ["--config_path", str(config_yaml)]).to_dict() == chosen
    # what the encoder fixed is recorded with the adapter: its state shape, not a config default
    encoder = StaMoEncoder.from_pretrained(tiny_stamo_dir).config
    shape = (encoder.num_state_tokens, encoder.state_dim)
    assert shape != (2, 1024) and saved_target_shape(result.adapter_dir) == shape

    # an old run's config.yaml held the shape as fields (with a value its adapter did not have): it resumes
    _old_form(config_yaml, state_dim=1024)
    with pytest.warns(FutureWarning, match="adapter.num_state_tokens, adapter.state_dim"):
        resumed_cfg = parse_config(FinetuneConfig, ["--config_path", str(config_yaml), "--max_steps", "3"])
    with pytest.warns(FutureWarning, match="adapter.num_state_tokens, adapter.state_dim"):
        resumed = finetune(resumed_cfg)
    assert resumed.step == 3 and [m["step"] for m in load_metrics(result.run_dir)] == [1, 2, 3]
    changes = [
        json.loads(line) for line in (result.run_dir / "config_changes.jsonl").read_text().splitlines()
    ]
    assert changes == [{"step": 2, "changes": {"max_steps": {"old": 2, "new": 3}}}]
    assert saved_target_shape(resumed.adapter_dir) == shape
