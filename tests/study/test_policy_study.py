"""The policy study: config checks, resumable stages, the commands it runs, and a report read from run files."""

from __future__ import annotations

import json

import pytest

from stamo_vla.study.policy_study import PolicyStudy, PolicyStudyConfig
from stamo_vla.study.stages import StagedRun, StageFailed


def test_config_refuses_a_base_that_trains_on_the_evaluated_tasks():
    with pytest.raises(ValueError, match=r"share tasks \[1\]"):
        PolicyStudyConfig(eval_task_ids=[0, 1], base_task_ids=[1, 2])
    with pytest.raises(ValueError, match=r"arms entry='lora'"):
        PolicyStudyConfig(arms=["lora"])
    with pytest.raises(ValueError, match="train_percent=100"):
        PolicyStudyConfig(train_percent=100)  # held-out episodes are needed
    assert PolicyStudyConfig(arms=["none", "state"], seeds=[0, 1]).runs == [
        ("none", 0),
        ("state", 0),
        ("none", 1),
        ("state", 1),
    ]  # seed-major: both arms of the first seed finish first


class _Flaky(StagedRun):
    STAGES = ("one", "two", "three")

    def __init__(self, out, calls, fail_once):
        super().__init__(None, out, list(self.STAGES))
        self.calls, self.fail_once = calls, fail_once

    def _stage(self, name):
        self.calls.append(name)
        if name in self.fail_once:
            self.fail_once.remove(name)
            raise StageFailed(f"{name} interrupted")

    def stage_fn(self, name):
        return lambda: self._stage(name)


def test_an_interrupted_stage_resumes_and_finished_stages_are_skipped(tmp_path):
    calls: list[str] = []
    with pytest.raises(StageFailed, match="two interrupted"):
        _Flaky(tmp_path, calls, fail_once={"two"}).main(always=())
    assert calls == ["one", "two"] and (tmp_path / ".stages" / "one.json").is_file()
    assert not (tmp_path / ".stages" / "two.json").exists()  # no mark for an unfinished stage
    _Flaky(tmp_path, calls, fail_once=set()).main(always=())
    assert calls == ["one", "two", "two", "three"]  # "one" was not run again


def test_a_stage_time_sums_every_call_that_worked_on_it(tmp_path, monkeypatch):
    import json
    import time

    from stamo_vla.study import stages

    monkeypatch.setattr(stages, "HEARTBEAT_S", 0.05)
    seen = []

    class _Slow(_Flaky):
        def _stage(self, name):
            time.sleep(0.3)
            seen.append((tmp_path / ".stages" / f"{name}.elapsed").is_file())  # written while the stage runs
            super()._stage(name)

    with pytest.raises(StageFailed):
        _Slow(tmp_path, [], fail_once={"two"}).main(always=())
    interrupted = json.loads((tmp_path / ".stages" / "two.elapsed").read_text())
    assert interrupted["calls"] == 1 and interrupted["seconds"] >= 0.3
    _Slow(tmp_path, [], fail_once=set()).main(always=())
    two = json.loads((tmp_path / ".stages" / "two.json").read_text())
    assert two["calls"] == 2 and two["seconds"] >= 0.6  # the interrupted call's time is kept
    assert json.loads((tmp_path / ".stages" / "one.json").read_text())["calls"] == 1
    assert not (tmp_path / ".stages" / "two.elapsed").exists() and all(seen)


def test_stage_commands_fail_with_the_log_tail(tmp_path):
    run = StagedRun(None, tmp_path, [])
    with pytest.raises(StageFailed, match=r"(?s)exit 3.*boom"):
        run.run(["python", "-c", "import sys; print('boom'); sys.exit(3)"], "bad")
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()


def _option(args, flag):
    return args[args.index(flag) + 1]


def test_every_arm_gets_the_same_budget_and_the_evaluation_is_upstreams(tmp_path, monkeypatch):
    study = PolicyStudy(PolicyStudyConfig(output_dir=str(tmp_path), arms=["none", "state"], seeds=[0, 1]))
    monkeypatch.setattr(PolicyStudy, "stamo_model", lambda self: tmp_path / "stamo")
    runs = {name: study.finetune_args(*name) for name in study.cfg.runs}
    for flag in ("--max_steps", "--batch_size", "--config", "--vla_path", "--data.dataset_names"):
        assert len({_option(a, flag) for a in runs.values()}) == 1, flag  # equal budgets and data
    assert {_option(a, "--seed") for a in runs.values()} == {"0", "1"}
    assert _option(runs[("none", 0)], "--adapter.target") == "none"
    assert "--stamo_path" not in runs[("none", 0)] and "--stamo_path" in runs[("state", 0)]

    commands = []
    monkeypatch.setattr(PolicyStudy, "run", lambda self, args, log, env=None: commands.append(args))
    study.stage_evaluate()
    assert len(commands) == 4
    for args in commands:
        assert _option(args, "--num_trials_per_task") == "50"  # the 50 fixed initial states per task
        assert "--max_steps" not in args and "--num_steps_wait" not in args  # the suite's 220 steps, 10 waits
        assert _option(args, "--task_ids") == "[0,1]"


def _fake_run_files(study: PolicyStudy, successes: dict):
    """Write what the stages leave behind: manifests, base metrics, training metrics, eval summaries."""
    from stamo_vla.libero.collect import MANIFEST_NAME

    for kind in ("finetune", "base"):
        manifest = {
            "suite": "libero_spatial",
            "init_states": "fresh",
            "render_resolution": 128,
            "episodes": {},
        }
        for i in range(3):
            manifest["episodes"][f"0:{i}"] = {
                "success": i < 2,
                "file_path": f"p{i}",
                "init_distance": 0.02 + i,
            }
        path = study.data / study.dataset(kind) / MANIFEST_NAME
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(manifest))
    study.base_run.mkdir(parents=True)
    (study.base_run / "final_metrics.json").write_text(
        json.dumps({"step": 10, "loss": 1.5, "action_accuracy": 0.4})
    )
    for (arm, seed), wins in successes.items():
        name = study.run_id(arm, seed)
        run = study.finetune_root / name
        run.mkdir(parents=True)
        lines = [{"step": s, "train/loss_action": 1.0 / s} for s in (1, 2, 3)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (run / "heldout_metrics.json").write_text(json.dumps({"samples": 9, "action_l1": 0.1 + seed}))
        tasks = {"0": {"successes": wins[0], "episodes": 50, "success_rate": wins[0] / 50}}
        tasks["1"] = {"successes": wins[1], "episodes": 50, "success_rate": wins[1] / 50}
        total = sum(wins)
        overall = {"successes": total, "episodes": 100, "success_rate": total / 100}
        summary = {"overall": overall, "suites": {"libero_spatial": {"tasks": tasks}}, "missing_episodes": 0}
        (study.evals / name).mkdir(parents=True)
        (study.evals / name / "summary.json").write_text(json.dumps(summary))


def test_report_reads_every_number_from_the_run_files(tmp_path):
    pytest.importorskip("matplotlib")
    from stamo_vla.libero.results import wilson_interval
    from stamo_vla.study.policy_report import write_report

    cfg = PolicyStudyConfig(output_dir=str(tmp_path), arms=["none", "state"], seeds=[0, 1])
    study = PolicyStudy(cfg)
    successes = {("none", 0): (30, 25), ("none", 1): (35, 30), ("state", 0): (40, 36), ("state", 1): (42, 40)}
    _fake_run_files(study, successes)
    study.record_command(["stamo-vla", "study", "--seeds", "[0,1]"])
    study.record_command(["stamo-vla", "study", "--seeds", "[0,1]"])  # resumed once
    report = write_report(study).read_text()
    data = json.loads((tmp_path / "study.json").read_text())

    state = data["arms"]["state"]
    assert state["pooled_success_rate"] == pytest.approx(158 / 200)
    assert state["pooled_ci95"] == pytest.approx(wilson_interval(158, 200))
    assert state["seed_mean"] == pytest.approx((0.76 + 0.82) / 2)
    assert state["seed_std"] == pytest.approx(0.0424264, abs=1e-6)  # sample std of 0.76 and 0.82
    assert data["collection"]["finetune"]["episodes"] == 2 and data["collection"]["base"]["disjoint"]
    assert "79.0% [" in report and "reaches the 60% bar" in report
    assert "Produced by `stamo-vla study --seeds [0,1]`" in report and "resumed 1 time(s)" in report
    assert (
        "StaMo `state` vs plain LoRA, per seed: seed 0 +21.0, seed 1 +17.0 points "
        "(+19.0 ± 2.8 over seeds; every seed agrees on the sign)."
    ) in report
    assert "| none | 0 | 55.0% [" in report and "0: 30/50, 1: 25/50" in report
    assert (tmp_path / "curves.png").is_file()

    # one StaMo seed still unevaluated: it is compared with nothing, and one seed separates nothing
    (study.evals / "state_seed1" / "summary.json").unlink()
    report = write_report(study).read_text()
    assert (
        "StaMo `state` vs plain LoRA, per seed: seed 0 +21.0 points (one seed cannot separate an arm from the "
        "seed-to-seed spread) (partial: seeds [0] of [0, 1] are evaluated in both arms)."
    ) in report
    assert "| state | 1 | 76.0% [" in report and "| one seed |" in report


def test_report_of_an_unfinished_study_says_what_is_missing(tmp_path):
    from stamo_vla.fileio import write_json_atomic
    from stamo_vla.study.policy_report import write_report

    marks = tmp_path / ".stages"
    write_json_atomic(marks / "collect.json", {"stage": "collect", "seconds": 600.0, "calls": 3})
    write_json_atomic(
        marks / "stamo.json", {"stage": "stamo", "seconds": 60.0}
    )  # written before calls were counted
    write_json_atomic(marks / "base.elapsed", {"stage": "base", "seconds": 120.0, "calls": 1})
    report = write_report(PolicyStudy(PolicyStudyConfig(output_dir=str(tmp_path)))).read_text()
    assert (
        "No evaluation has finished yet." in report
        and "not evaluated" in report
        and "Not trained yet." in report
    )
    assert "collect 10.0 min (3 calls)" in report and "stamo 1.0 min (finishing call only)" in report
    assert "base 2.0 min (running)" in report and "total 13.0 min" in report
