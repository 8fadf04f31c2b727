"""Every YAML preset under stamo_vla/presets parses into its config class (fields exist, values validate)."""

from pathlib import Path

import pytest

from stamo_vla.configs import PRESET_DIR, parse_config

PRESETS = sorted(p.stem for p in Path(PRESET_DIR).glob("*.yaml"))


def config_class(name: str):
    if name.startswith("pretrain_stamo_"):
        from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

        return PretrainStaMoConfig, "pretrain_stamo_", []
    if name.startswith("finetune_"):
        from stamo_vla.training.finetune_config import FinetuneConfig

        # presets with a StaMo head need a StaMo checkpoint, which the user passes on the command line
        return FinetuneConfig, "finetune_", ["--stamo_path", "/models/stamo"]
    if name.startswith("eval_"):
        from stamo_vla.evaluation import EvalConfig

        # model presets take the checkpoint on the command line
        return (
            EvalConfig,
            "eval_",
            [] if name == "eval_oracle" else ["--policy.checkpoint", "/models/openvla-7b"],
        )
    if name.startswith("study_"):
        from stamo_vla.study.policy_study import PolicyStudyConfig

        return PolicyStudyConfig, "study_", []
    raise AssertionError(f"preset {name} has no known recipe prefix")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parses(name):
    cls, prefix, extra = config_class(name)
    cfg = parse_config(cls, ["--config", name[len(prefix) :], *extra], prefix=prefix)
    assert isinstance(cfg, cls)


def test_cotrain_preset_is_one_real_plus_four_stamo():
    from stamo_vla.training.finetune_config import FinetuneConfig

    cfg = parse_config(FinetuneConfig, ["--config", "cotrain_tiny", "--stamo_path", "/x"], prefix="finetune_")
    assert cfg.data.balance_weights and len(cfg.data.dataset_names) == 2
    assert cfg.data.dataset_names[1].endswith("_actionfree")


def test_paper_presets_follow_the_upstream_recipe():
    from stamo_vla.training.finetune_config import FinetuneConfig

    steps = {"paper": 50_000, "paper_object": 50_000, "paper_goal": 60_000, "paper_10": 80_000}
    for name, max_steps in steps.items():
        cfg = parse_config(FinetuneConfig, ["--config", name, "--stamo_path", "/x"], prefix="finetune_")
        assert (cfg.max_steps, cfg.batch_size, cfg.optim.lr, cfg.adapter.lora_rank) == (
            max_steps,
            16,
            5e-4,
            32,
        )
        assert (
            cfg.adapter.effective_lora_alpha == 16 and cfg.data.image_aug and cfg.optim.weight_decay == 0.01
        )
