"""EvalConfig validation, the CLI's error handling, unnorm_key resolution and headless-rendering guidance."""

import sys
import types

import pytest
import yaml

from stamo_vla import cli
from stamo_vla import evaluation as SCRIPT
from stamo_vla.configs import load_config, save_config
from stamo_vla.evaluation import (
    AdapterPolicyConfig,
    CheckpointPolicyConfig,
    EvalConfig,
    ReleasedOFTPolicyConfig,
    load_adapter_into,
)
from stamo_vla.libero.evaluation import RenderingError, evaluate, rendering_guard
from stamo_vla.libero.evaluation_policies import ScriptedPolicyConfig, resolve_unnorm_key


def main(argv: list[str]) -> int:
    return cli.main(["eval", *argv])


SUITES = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]


def test_unknown_suite_lists_valid_ones():
    pytest.importorskip("libero")
    with pytest.raises(
        ValueError, match=r"suites='libero_spatal' is not valid; .* Did you mean 'libero_spatial'"
    ) as info:
        EvalConfig(policy=ScriptedPolicyConfig(), suites=["libero_spatal"])
    assert all(s in str(info.value) for s in SUITES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "diffusion"}, "policy='diffusion' is not valid"),
        ({"video": "some"}, "video='some' is not valid; allowed: \\['all', 'failures', 'none'\\]"),
        (
            {"policy": lambda: CheckpointPolicyConfig(checkpoint="c", quantization="3bit")},
            "quantization='3bit'",
        ),
        ({"num_trials_per_task": 51}, "ships 50 fixed initial states"),
        ({"num_workers": 0}, "num_workers=0 must be a positive integer"),
        ({"open_loop_steps": 0}, "open_loop_steps=0"),
        ({"task_ids": [-1]}, "task_ids=\\[-1\\]"),
        ({"suites": ["libero_10", "libero_10"]}, "lists a suite twice"),
        ({"max_steps": 995}, "exceeds the LIBERO env horizon of 1000 steps; use max_steps <= 990"),
        ({"policy": CheckpointPolicyConfig}, "policy.checkpoint is empty"),
    ],
)
def test_bad_values_name_field_and_allowed_set(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kwargs = {
            k: v() if callable(v) else v for k, v in kwargs.items()
        }  # policies are built inside raises()
        EvalConfig(**{"policy": ScriptedPolicyConfig(), **kwargs})


def test_defaults_follow_upstream_and_round_trip(tmp_path):
    cfg = EvalConfig(policy=CheckpointPolicyConfig(checkpoint="ckpt"))
    assert (cfg.num_trials_per_task, cfg.seed, cfg.num_steps_wait, cfg.center_crop) == (50, 7, 10, None)
    assert cfg.resolve_center_crop() is True  # nothing recorded: upstream's default
    assert [cfg.max_steps_for(s) for s in SUITES] == [220, 280, 300, 520, 400]
    assert (
        EvalConfig(policy=CheckpointPolicyConfig(checkpoint="c"), max_steps=5).max_steps_for("libero_10") == 5
    )
    custom = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint="c"),
        suites=["libero_goal", "libero_10"],
        task_ids=[1, 3],
        max_steps=9,
    )
    save_config(custom, tmp_path / "c.yaml")
    assert load_config(EvalConfig, tmp_path / "c.yaml") == custom


def test_missing_checkpoint_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["--output_dir", str(tmp_path / "o")]) == 2
    assert "checkpoint is empty" in capsys.readouterr().err
    assert main(["--policy.checkpoint", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope' is not a directory" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "ckpt"], "--checkpoint is now --policy.checkpoint"),
        (["--adapter_dir=runs/a"], "--adapter_dir is now --policy.type adapter --policy.adapter_dir"),
        (["--quantization", "4bit"], "--quantization is now --policy.quantization"),
        (["--policy", "scripted"], "--policy scripted is now --policy.type scripted"),
        (["--policy", "openvla"], "--policy openvla is now --policy.type checkpoint"),
        (["--policy.type", "diffusion"], "invalid choice: 'diffusion'"),
        (
            ["--policy.type", "scripted", "--policy.adapter_dir", "a"],
            "`adapter_dir` are not valid for Scripted",
        ),
    ],
)
def test_old_flat_flags_name_their_new_spelling(args, message, tmp_path, capsys):
    assert main([*args, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_short_forms_and_an_old_flat_yaml_parse_into_policy_kinds(tmp_path):
    from stamo_vla.configs import parse_config

    short = SCRIPT.parse(["--policy.checkpoint", "ckpt", "--policy.quantization", "4bit"])
    assert short.policy == CheckpointPolicyConfig(checkpoint="ckpt", quantization="4bit")
    old = {"policy": "openvla", "checkpoint": "base", "adapter_dir": "ad", "unnorm_key": "k", "device": "cpu"}
    (tmp_path / "adapter.yaml").write_text(yaml.safe_dump({**old, "suites": ["libero_goal"], "seed": 3}))
    cfg = parse_config(EvalConfig, ["--config", str(tmp_path / "adapter.yaml")])
    assert (cfg.suites, cfg.seed) == (["libero_goal"], 3)
    assert cfg.policy == AdapterPolicyConfig(
        checkpoint="base", adapter_dir="ad", unnorm_key="k", device="cpu"
    )
    (tmp_path / "plain.yaml").write_text(
        yaml.safe_dump({**old, "adapter_dir": None, "future_video_stamo": None})
    )
    plain = parse_config(EvalConfig, ["--config", str(tmp_path / "plain.yaml")]).policy
    assert plain == CheckpointPolicyConfig(checkpoint="base", unnorm_key="k", device="cpu")
    (tmp_path / "oracle.yaml").write_text(yaml.safe_dump({"policy": "scripted", "checkpoint": ""}))
    assert (
        parse_config(EvalConfig, ["--config", str(tmp_path / "oracle.yaml")]).policy == ScriptedPolicyConfig()
    )


def test_a_config_yaml_of_the_flat_layout_loads_with_the_outcome_settings_it_recorded():
    from pathlib import Path

    from stamo_vla.libero.evaluation import OUTCOME_FIELDS, outcome_settings

    path = Path(__file__).parents[1] / "data" / "fixtures" / "eval_config_flat_layout.yaml"
    recorded = yaml.safe_load(path.read_text())
    cfg = load_config(EvalConfig, path)
    assert cfg.policy == AdapterPolicyConfig(
        checkpoint="runs/base/model",
        adapter_dir="runs/arm/adapter",
        unnorm_key="libero_spatial_no_noops",
        quantization="4bit",
    )
    flat_outcome = ("policy", "checkpoint", "adapter_dir", "unnorm_key", "dtype", "quantization")
    names = (*flat_outcome, "attn_implementation", *OUTCOME_FIELDS)
    assert outcome_settings(cfg) == {name: recorded[name] for name in names}


def test_a_kind_refuses_a_directory_of_another_kind(tmp_path):
    released = tmp_path / "released"
    released.mkdir()
    (released / "action_head--150000_checkpoint.pt").write_bytes(b"")
    cfg = EvalConfig(policy=CheckpointPolicyConfig(checkpoint=str(released)), output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="is a released OpenVLA-OFT directory .* --policy.type oft"):
        cfg.policy.build(cfg)
    ours = EvalConfig(
        policy=ReleasedOFTPolicyConfig(checkpoint=str(tmp_path)), output_dir=str(tmp_path / "o")
    )
    with pytest.raises(
        ValueError, match="is not a released OpenVLA-OFT directory .* --policy.type checkpoint"
    ):
        ours.policy.build(ours)


def test_cli_unknown_suite(capsys):
    assert main(["--policy.type", "scripted", "--suites", "[libero_spatal]"]) == 2
    err = capsys.readouterr().err
    assert "suites='libero_spatal' is not valid" in err and "Did you mean 'libero_spatial'" in err
    assert "'libero_spatial_swap'" in err  # the list holds the installed LIBERO-PRO suites


def test_unnorm_key_default_fallback_and_error():
    assert resolve_unnorm_key(["libero_spatial", "bridge"], "libero_spatial") == "libero_spatial"
    assert resolve_unnorm_key(["libero_spatial_no_noops"], "libero_spatial") == "libero_spatial_no_noops"
    assert resolve_unnorm_key(["a", "b"], "libero_goal", requested="b") == "b"
    with pytest.raises(ValueError, match="Available keys: \\['bridge_orig', 'libero_10_no_noops'\\]"):
        resolve_unnorm_key(["libero_10_no_noops", "bridge_orig"], "libero_spatial")
    with pytest.raises(ValueError, match="Did you mean 'libero_10_no_noops'"):
        resolve_unnorm_key(["libero_10_no_noops"], "libero_10", requested="libero_10_no_noop")


def test_missing_adapter_module_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "stamo_vla.adapter", None)  # import fails as if not shipped
    with pytest.raises(RuntimeError, match="stamo_vla.adapter.load_adapter is not available"):
        load_adapter_into(object(), "some/adapter")


def test_rendering_failures_become_guidance():
    from stamo_vla.libero.workers import WorkerError

    remote = WorkerError(0, None, "HeadlessRenderingError", "Traceback ...\nEGLError: eglInitialize failed")
    guarded = rendering_guard(remote)
    assert isinstance(guarded, RenderingError)
    assert "MUJOCO_GL=egl" in str(guarded) and "libosmesa6" in str(guarded)
    other = KeyError("agentview_image")
    assert rendering_guard(other) is other


def test_render_error_in_workers_reaches_the_cli_as_guidance(tmp_path, monkeypatch, capsys):
    from stamo_vla.libero.env import HeadlessRenderingError

    def broken_pool(num_workers):
        raise HeadlessRenderingError(
            "MuJoCo could not create an offscreen rendering context with MUJOCO_GL=egl"
        )

    catalog = types.SimpleNamespace(task_count=lambda s: 1, task_instruction=lambda s, t: "x")
    cfg = EvalConfig(
        policy=ScriptedPolicyConfig(), num_trials_per_task=1, output_dir=str(tmp_path), progress=False
    )
    with pytest.raises(RenderingError, match="PYOPENGL_PLATFORM"):
        evaluate(cfg, pool_factory=broken_pool, catalog=catalog)

    import stamo_vla.libero.evaluation as evaluation

    monkeypatch.setattr(evaluation, "_default_pool_factory", lambda cfg: broken_pool)
    monkeypatch.setattr(SCRIPT, "evaluate", lambda cfg: evaluate(cfg, catalog=catalog))
    assert (
        main(["--policy.type", "scripted", "--num_trials_per_task", "1", "--output_dir", str(tmp_path / "b")])
        == 3
    )
    err = capsys.readouterr().err
    assert "apt-get install libosmesa6" in err and "Traceback" not in err


def test_presets_parse_with_overrides():
    from stamo_vla.configs import available_presets, parse_config

    assert {"eval_upstream", "eval_oracle", "eval_tiny"} <= set(available_presets("eval_"))
    up = parse_config(EvalConfig, ["--config", "upstream", "--policy.checkpoint", "ckpt"], prefix="eval_")
    assert up.suites == ["libero_spatial", "libero_object", "libero_goal", "libero_10"]
    assert (up.num_trials_per_task, up.seed, up.center_crop, up.max_steps) == (50, 7, None, None)
    oracle = parse_config(EvalConfig, ["--config", "oracle", "--num_workers", "4"], prefix="eval_")
    assert (oracle.policy.name, oracle.num_workers) == ("scripted", 4)
    tiny = parse_config(EvalConfig, ["--config", "tiny", "--policy.checkpoint", "c"], prefix="eval_")
    assert (tiny.max_steps, tiny.policy.unnorm_key) == (5, "tiny_dataset")


def test_evaluation_modules_never_import_tensorflow_or_the_simulator():
    import subprocess

    code = (
        "import sys, importlib.util;"
        "import stamo_vla.libero.evaluation, stamo_vla.evaluation, stamo_vla.libero.videos;"
        "import stamo_vla.cli;"
        "spec = importlib.util.spec_from_file_location('s', 'eval/run_libero_eval.py');"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec));"
        "print([m for m in ('tensorflow', 'libero', 'mujoco', 'robosuite', 'imageio') if m in sys.modules])"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_interrupt_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(SCRIPT, "evaluate", interrupted)
    assert main(["--policy.type", "scripted", "--output_dir", str(tmp_path / "x")]) == 130
    assert f"--output_dir {tmp_path / 'x'} to resume" in capsys.readouterr().err
