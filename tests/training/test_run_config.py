"""One run config for every recipe: one name per knob, the same resume default, old saved configs still load."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from stamo_vla.configs import save_config
from stamo_vla.training.base_training import BaseTrainConfig
from stamo_vla.training.finetune_config import FinetuneConfig
from stamo_vla.training.resume_config import allowed_changes
from stamo_vla.training.run_config import RunConfig, load_run_config, upgrade_saved_run
from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


@pytest.mark.parametrize("config_cls", [FinetuneConfig, BaseTrainConfig, PretrainStaMoConfig])
def test_every_recipe_shares_the_run_fields_and_resumes_by_default(config_cls):
    assert issubclass(config_cls, RunConfig)
    assert {f.name for f in dataclasses.fields(config_cls)} >= RUN_FIELDS
    cfg = config_cls(stamo_path="x") if config_cls is FinetuneConfig else config_cls()
    assert cfg.resume is True


def test_finetune_run_dir_is_derived_only_when_not_given():
    cfg = FinetuneConfig(stamo_path="x")
    assert cfg.run_path().parent.name == "runs" and cfg.run_path().name == cfg.default_run_id
    assert str(FinetuneConfig(stamo_path="x", run_dir="out/a").run_path()) == "out/a"


@pytest.mark.parametrize("field", ["max_steps", "batch_size", "grad_accumulation_steps", "log_steps"])
def test_run_fields_are_validated_alike(field):
    with pytest.raises(ValueError, match=f"{field}=0 must be a positive integer"):
        BaseTrainConfig(**{field: 0})
    with pytest.raises(ValueError, match="save_steps=-1 must be an integer >= 0"):
        PretrainStaMoConfig(save_steps=-1)


def test_saves_and_logs_at_the_period_and_the_last_step():
    cfg = RunConfig(max_steps=7, save_steps=3, log_steps=2)
    assert [s for s in range(1, 8) if cfg.saves_at(s)] == [3, 6, 7]
    assert [s for s in range(1, 8) if cfg.logs_at(s)] == [2, 4, 6, 7]
    assert [s for s in range(1, 8) if RunConfig(max_steps=7, save_steps=0).saves_at(s)] == [7]


def test_old_field_names_are_mapped():
    old = {"save_every": 5, "log_every": 2, "eval_every": 4, "run_root_dir": "runs/x", "run_id": "r1"}
    assert upgrade_saved_run(old) == {
        "save_steps": 5,
        "log_steps": 2,
        "eval_steps": 4,
        "run_dir": "runs/x/r1",
    }
    derived = upgrade_saved_run({"run_root_dir": "runs", "run_id": None}, run_dir="runs/found")
    assert derived == {"run_dir": "runs/found"}


def test_an_old_finetune_config_yaml_loads_and_resumes_without_spurious_changes(tmp_path):
    """A config.yaml written before the run fields were renamed: run_root_dir + run_id, resume false."""
    new = FinetuneConfig(vla_path="tiny", stamo_path="s", run_dir=str(tmp_path / "runs" / "r1"), save_steps=7)
    save_config(new, tmp_path / "new.yaml")
    old = yaml.safe_load((tmp_path / "new.yaml").read_text())
    old.pop("run_dir")
    old.update(run_root_dir=str(tmp_path / "runs"), run_id="r1", resume=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))

    loaded = load_run_config(FinetuneConfig, tmp_path / "config.yaml")
    assert loaded.run_dir == str(tmp_path / "runs" / "r1") and loaded.save_steps == 7
    assert loaded.resume is False  # what that run chose
    upgraded = FinetuneConfig.upgrade_saved(old, tmp_path)
    # resume and run_dir say how to resume, not what runs
    assert allowed_changes(new.to_dict(), upgraded) == {}


def test_an_old_pretrain_config_yaml_loads(tmp_path):
    save_config(PretrainStaMoConfig(save_steps=3, log_steps=2, eval_steps=6), tmp_path / "new.yaml")
    data = yaml.safe_load((tmp_path / "new.yaml").read_text())
    for new, old in (("save_steps", "save_every"), ("log_steps", "log_every"), ("eval_steps", "eval_every")):
        data[old] = data.pop(new)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    loaded = load_run_config(PretrainStaMoConfig, tmp_path / "config.yaml")
    assert (loaded.save_steps, loaded.log_steps, loaded.eval_steps) == (3, 2, 6)


def test_mixed_precision_no_is_the_word_typed_not_a_yaml_boolean(tmp_path):
    from stamo_vla.configs import choice_word, parse_config

    # YAML 1.1 reads `no` as false; draccus then hands "False" to the str field
    for cls, prefix in ((FinetuneConfig, "finetune_"), (BaseTrainConfig, ""), (PretrainStaMoConfig, "")):
        extra = ["--adapter.target", "none"] if cls is FinetuneConfig else []
        args = ["--mixed_precision", "no", "--run_dir", str(tmp_path / "r"), *extra]
        cfg = parse_config(cls, args, prefix=prefix)
        assert cfg.mixed_precision == "no", cls.__name__
    path = tmp_path / "config.yaml"
    path.write_text("mixed_precision: no\nrun_dir: r\n")
    assert parse_config(BaseTrainConfig, ["--config", str(path)]).mixed_precision == "no"
    assert choice_word("True", ("no", "bf16")) == "True"  # no allowed word reads as true: left for the check
    with pytest.raises(
        ValueError, match=r"mixed_precision='True' is not valid; allowed: \['auto', 'no', 'bf16'\]"
    ):
        parse_config(BaseTrainConfig, ["--mixed_precision", "yes", "--run_dir", str(tmp_path / "r")])
