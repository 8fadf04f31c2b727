"""The demo's and the policy study's stage commands are `stamo-vla` commands whose options parse into the configs
of those commands (a renamed field fails here, not hours into a study)."""

from __future__ import annotations

import sys

import pytest

from stamo_vla.configs import parse_config


def _configs() -> dict[str, tuple[type, str]]:
    from stamo_vla.adapter.cache_targets import CacheTargetsConfig
    from stamo_vla.evaluation import EvalConfig
    from stamo_vla.libero.collect import CollectConfig
    from stamo_vla.study.heldout import HeldoutConfig
    from stamo_vla.study.probe_run import ProbeConfig
    from stamo_vla.training.base_training import BaseTrainConfig
    from stamo_vla.training.finetune_config import FinetuneConfig
    from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

    return {
        "collect": (CollectConfig, ""),
        "pretrain": (PretrainStaMoConfig, "pretrain_stamo_"),
        "cache-targets": (CacheTargetsConfig, ""),
        "train-base": (BaseTrainConfig, ""),
        "finetune": (FinetuneConfig, "finetune_"),
        "heldout": (HeldoutConfig, ""),
        "eval": (EvalConfig, "eval_"),
        "probe": (ProbeConfig, ""),
    }


def _recorded(run_cls, monkeypatch) -> list[list[str]]:
    commands: list[list[str]] = []
    monkeypatch.setattr(run_cls, "run", lambda self, args, log, env=None: commands.append(args))
    return commands


def _check(commands: list[list[str]], expected: set[str]) -> None:
    configs = _configs()
    seen = set()
    for argv in commands:
        assert argv[0] == sys.executable
        i = argv.index("stamo_vla.cli")  # `python -m stamo_vla.cli` or `torchrun ... -m stamo_vla.cli`
        assert argv[i - 1] == "-m" and not any(a.endswith(".py") for a in argv)  # no script run by path
        name, options = argv[i + 1], argv[i + 2 :]
        cls, prefix = configs[name]
        assert isinstance(parse_config(cls, options, prefix=prefix), cls), argv
        seen.add(name)
    assert seen == expected


def test_demo_stages_run_stamo_vla_commands_that_parse(tmp_path, monkeypatch):
    from stamo_vla.demo import Demo, DemoConfig

    commands = _recorded(Demo, monkeypatch)
    monkeypatch.setattr(Demo, "stamo_model", lambda self: tmp_path / "stamo" / "model")
    monkeypatch.setattr(Demo, "_ensure_base", lambda self: None)
    demo = Demo(DemoConfig(output_dir=str(tmp_path / "demo")))
    for stage in ("collect", "pretrain", "cache", "finetune", "evaluate", "probe"):
        demo.stage_fn(stage)()
    _check(commands, {"collect", "pretrain", "cache-targets", "finetune", "eval", "probe"})
    finetunes = [a for a in commands if "finetune" in a]
    assert all(a[a.index("--nproc-per-node") + 1] == "2" for a in finetunes)  # under torchrun


@pytest.mark.parametrize("with_stamo_path", [False, True])
def test_policy_study_stages_run_stamo_vla_commands_that_parse(tmp_path, monkeypatch, with_stamo_path):
    from stamo_vla.fileio import write_json_atomic
    from stamo_vla.study import policy_study
    from stamo_vla.study.policy_study import POWER_NAME, PolicyStudy, PolicyStudyConfig

    commands = _recorded(PolicyStudy, monkeypatch)
    monkeypatch.setattr(policy_study, "code_version", lambda: {"commit": "c" * 40, "dirty": False})
    stamo = str(tmp_path / "given_stamo") if with_stamo_path else None
    cfg = PolicyStudyConfig(output_dir=str(tmp_path / "study"), stamo_path=stamo, pilot_seeds=2)
    study = PolicyStudy(cfg)
    monkeypatch.setattr(PolicyStudy, "stamo_model", lambda self: tmp_path / "stamo" / "model")
    write_json_atomic(study.out / POWER_NAME, {"seeds": {"none": [0, 1, 2], "state": [0, 1, 2]}})
    for stage in ("collect", "stamo", "base", "targets", "pilot", "runs"):
        study.stage_fn(stage)()
    expected = {"collect", "cache-targets", "train-base", "finetune", "heldout", "eval"}
    _check(commands, expected if with_stamo_path else expected | {"pretrain"})
    finetunes = [
        a[a.index("--run_dir") + 1] for a in commands if a[a.index("stamo_vla.cli") + 1] == "finetune"
    ]
    # the pilot's 4 runs; then `runs` goes over every planned run (nothing marks the pilot's done here): 6
    assert [f.rsplit("/", 1)[-1] for f in finetunes[4:]] == [
        f"{a}_seed{s}" for s in (0, 1, 2) for a in ("none", "state")
    ]
