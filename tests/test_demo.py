"""The demo's report is built from the run's own files; stages are validated and skipped when done."""

import pytest

from stamo_vla.demo import Demo, DemoConfig
from stamo_vla.fileio import append_jsonl, write_json_atomic


def fake_run(tmp_path) -> Demo:
    demo = Demo(DemoConfig(output_dir=str(tmp_path / "demo")))
    write_json_atomic(
        demo.data / demo.dataset / "collect_manifest.json",
        {
            "suite": "libero_spatial",
            "episodes": {
                "0:0": {"success": True, "steps": 80, "kept_steps": 77},
                "0:1": {"success": False, "steps": 400, "kept_steps": 0},
                "1:0": {"success": True, "steps": 97, "kept_steps": 90},
            },
        },
    )
    for step, loss in ((10, 1.75), (20, 0.5)):
        append_jsonl(demo.stamo_run / "metrics.jsonl", {"step": step, "train/loss": loss})
    append_jsonl(
        demo.stamo_run / "metrics.jsonl",
        {
            "step": 20,
            "eval/psnr": 19.25,
            "eval/psnr_shuffled": 17.5,
            "eval/ssim": 0.5,
            "eval/ssim_shuffled": 0.4,
            "eval/psnr_vae": 25.0,
            "eval/psnr_mean_frame": 16.0,
            "eval/loss": 0.25,
            "eval/loss_shuffled": 0.375,
            "eval/raw_state_var_fraction": 0.125,
            "eval/state_var_fraction": 0.875,
            "eval/state_effective_rank": 3.5,
        },
    )
    append_jsonl(
        demo.stamo_run / "metrics.jsonl", {"step": 0, "vae/psnr_heldout": 30.5, "vae/psnr_mean_frame": 16.25}
    )
    append_jsonl(
        demo.stamo_run / "metrics.jsonl",
        {"step": 10, "health/loss_own": 0.5, "health/loss_shuffled": 0.625, "health/loss_gap": 0.25},
    )
    for target, ce in (("motion", 4.125), ("none", 4.375)):
        for step in range(10, 90, 10):
            append_jsonl(
                demo.runs / target / "metrics.jsonl",
                {
                    "step": step,
                    "train/loss_action": ce + (80 - step) / 10,
                    "train/action_accuracy": step / 100,
                    **({"train/future_mse": 0.03125} if target != "none" else {}),
                },
            )
    stats = {demo.dataset: {"num_trajectories": 2, "num_transitions": 167}}
    write_json_atomic(demo.runs / "motion" / "dataset_statistics.json", stats)
    overall = {
        "successes": 3,
        "episodes": 4,
        "success_rate": 0.75,
        "ci95_low": 0.3,
        "ci95_high": 0.954,
        "mean_steps": 88.0,
    }
    write_json_atomic(demo.evals / "oracle" / "summary.json", {"overall": overall})
    (demo.probe).mkdir(parents=True)
    (demo.probe / "probe.md").write_text("| k | stamo_motion |\n|---|---|\n| 1 | 0.1234 |\n")
    write_json_atomic(demo.marks / "collect.json", {"stage": "collect", "seconds": 12.0})
    return demo


def test_report_numbers_come_from_the_run_files(tmp_path):
    pytest.importorskip("matplotlib")
    demo = fake_run(tmp_path)
    demo.report()
    report = (demo.out / "REPORT.md").read_text()
    for text in (
        "| 0 | 1 / 2 | 80 | 77 |",
        "| 1 | 1 / 1 | 97 | 90 |",
        "2 episodes, 167 transitions",
        "1.7500 (step 10) -> 0.5000 (step 20)",
        "| 20 | 19.25 | 17.50 | +1.75 | 0.2500 / 0.3750 | 0.500 / 0.400 | 25.00 | 16.00 |",
        "held-out PSNR 30.50 dB vs 16.25 dB for the mean training frame",
        "at step 10: held-out flow loss own 0.5000 vs shuffled 0.6250 (relative gap +0.250)",
        "between images 0.125 (after the bottleneck 0.875), effective rank of the state spread 3.50.",
        "| motion | 80 | 10.125 -> 5.125 | 0.200 -> 0.700 | 0.0312 -> 0.0312 |",
        "| 3/4 | 75.0 | [30.0, 95.4] | 88 |",
        "| 1 | 0.1234 |",
        "| collect | 12 |",
        "Own-state PSNR minus shuffled-state PSNR on held-out episodes: +1.75 dB;",
    ):
        assert text in report, text
    assert (demo.out / "figures" / "finetune_curves.png").is_file()


def test_finished_stages_are_skipped(tmp_path, capsys):
    demo = Demo(DemoConfig(output_dir=str(tmp_path / "d"), stages=["probe"]))
    write_json_atomic(demo.marks / "probe.json", {"stage": "probe", "seconds": 3.0})
    assert demo.main() == {"probe": 3.0}
    assert "done earlier" in capsys.readouterr().out


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match=r"stages=\['train'\] are not valid"):
        DemoConfig(stages=["train"])


def test_every_command_the_demo_runs_parses_with_its_command_config(tmp_path, monkeypatch):
    """The demo's stage commands are built offline (nothing runs) and each parses as its command would parse it:
    a renamed flag anywhere breaks this test, not a newcomer's first `make demo`."""
    import stamo_vla.evaluation  # noqa: F401  (registers the model policy kinds)
    from stamo_vla.adapter.cache_targets import CacheTargetsConfig
    from stamo_vla.configs import parse_config
    from stamo_vla.libero.collect import CollectConfig
    from stamo_vla.libero.evaluation_config import EvalConfig
    from stamo_vla.study.probe_run import ProbeConfig
    from stamo_vla.training.finetune_config import FinetuneConfig
    from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig

    configs = {
        "collect": (CollectConfig, ""),
        "pretrain": (PretrainStaMoConfig, ""),
        "cache-targets": (CacheTargetsConfig, ""),
        "finetune": (FinetuneConfig, "finetune_"),
        "eval": (EvalConfig, ""),
        "probe": (ProbeConfig, ""),
    }
    commands = []
    demo = Demo(DemoConfig(output_dir=str(tmp_path / "demo")))
    monkeypatch.setattr(Demo, "run", lambda self, args, log, env=None: commands.append(args))
    monkeypatch.setattr(Demo, "stamo_model", lambda self: tmp_path / "stamo")
    for stage in ("collect", "pretrain", "cache", "finetune", "evaluate", "probe"):
        demo.stage_fn(stage)()
    seen = []
    for args in commands:
        command, rest = args[args.index("stamo_vla.cli") + 1], args[args.index("stamo_vla.cli") + 2 :]
        cls, prefix = configs[command]
        parse_config(cls, rest, prefix=prefix)  # raises naming the flag when the demo spells one wrong
        seen.append(command)
    assert sorted(set(seen)) == sorted(configs)
    assert seen.count("finetune") == 3 and seen.count("eval") == 4  # three arms, and the oracle
