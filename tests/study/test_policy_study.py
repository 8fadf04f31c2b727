"""The policy study: config checks, resumable stages that record their commit and refuse to mix commits, the power
stage fixing the seeds before further runs, and a report read from run files."""

from __future__ import annotations

import json

import pytest

from stamo_vla.fileio import read_jsonl
from stamo_vla.study import stages
from stamo_vla.study.policy_study import POWER_NAME, PolicyStudy, PolicyStudyConfig
from stamo_vla.study.stages import MixedCommitsError, StagedRun, StageFailed

pytest.importorskip("scipy")


def test_config_names_the_bad_field_and_value():
    with pytest.raises(ValueError, match=r"share tasks \[1\]"):
        PolicyStudyConfig(eval_task_ids=[0, 1], base_task_ids=[1, 2])
    with pytest.raises(ValueError, match=r"primary_arms/secondary_arms entry='lora'"):
        PolicyStudyConfig(primary_arms=["none", "lora"])
    with pytest.raises(ValueError, match=r"an arm is listed twice"):
        PolicyStudyConfig(primary_arms=["none", "state"], secondary_arms=["state"])
    with pytest.raises(ValueError, match=r"pilot_seeds=1 must be an integer in \[2, max_seeds=40\]"):
        PolicyStudyConfig(pilot_seeds=1)
    with pytest.raises(ValueError, match=r"effect=1.5 must lie in \(0, 1\)"):
        PolicyStudyConfig(effect=1.5)
    cfg = PolicyStudyConfig(primary_arms=["none", "state"], pilot_seeds=2)
    assert cfg.pilot_runs == [("none", 0), ("state", 0), ("none", 1), ("state", 1)]  # seed-major


class _Flaky(StagedRun):
    STAGES = ("one", "two", "three")

    def __init__(self, out, calls, fail_once, allow_mixed=True):
        super().__init__(None, out, list(self.STAGES))
        self.calls, self.fail_once = calls, fail_once
        self.allow_mixed_commits = allow_mixed

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
    import time

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
    ends = [
        c for c in _Flaky(tmp_path, [], set()).stage_calls() if c["event"] == "end" and c["stage"] == "two"
    ]
    assert [c["ok"] for c in ends] == [False, True] and sum(c["seconds"] for c in ends) >= 0.6


def test_every_stage_call_records_its_commit_and_mixing_commits_is_refused(tmp_path, monkeypatch):
    version = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(stages, "code_version", lambda: dict(version))
    with pytest.raises(StageFailed):
        _Flaky(tmp_path, [], fail_once={"two"}, allow_mixed=False).main(always=())
    starts = [c for c in _Flaky(tmp_path, [], set()).stage_calls() if c["event"] == "start"]
    assert [(c["stage"], c["commit"], c["dirty"]) for c in starts] == [
        ("one", "a" * 40, False),
        ("two", "a" * 40, False),
    ]
    assert starts[0]["machine"]["cores"] >= 1 and starts[0]["machine"]["cpu"]

    version["commit"] = "b" * 40  # the code changed under the study
    calls: list[str] = []
    with pytest.raises(
        MixedCommitsError, match=r"ran from \['aaaa.*this code is bbbb.*--allow_mixed_commits true"
    ):
        _Flaky(tmp_path, calls, set(), allow_mixed=False).main(always=())
    assert calls == []  # refused before the stage ran
    version.update(commit="a" * 40, dirty=True)  # uncommitted changes are another version too
    with pytest.raises(MixedCommitsError, match=r"this code is a{40}\+dirty"):
        _Flaky(tmp_path, calls, set(), allow_mixed=False).main(always=())
    version["commit"], version["dirty"] = "b" * 40, False
    _Flaky(tmp_path, calls, set(), allow_mixed=True).main(always=())  # told: it runs, and the calls say so
    assert calls == ["two", "three"]
    assert {c["commit"] for c in _Flaky(tmp_path, [], set()).stage_calls() if c["event"] == "start"} == {
        "a" * 40,
        "b" * 40,
    }


def test_a_run_whose_stages_finished_before_commits_were_recorded_counts_as_another_version(
    tmp_path, monkeypatch
):
    from stamo_vla.fileio import write_json_atomic

    monkeypatch.setattr(stages, "code_version", lambda: {"commit": "a" * 40, "dirty": False})
    write_json_atomic(
        tmp_path / ".stages" / "one.json", {"stage": "one", "seconds": 5.0}
    )  # an older run's mark
    with pytest.raises(
        MixedCommitsError, match=r"unrecorded \(stages finished before commits were recorded\)"
    ):
        _Flaky(tmp_path, [], set(), allow_mixed=False).main(always=())


def test_code_version_names_this_checkouts_commit():
    version = stages.code_version()
    if version["commit"] is None:
        pytest.skip("not a git checkout")
    assert len(version["commit"]) == 40 and isinstance(version["dirty"], bool)


def test_stage_commands_fail_with_the_log_tail(tmp_path):
    run = StagedRun(None, tmp_path, [])
    with pytest.raises(StageFailed, match=r"(?s)exit 3.*boom"):
        run.run(["python", "-c", "import sys; print('boom'); sys.exit(3)"], "bad")
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()


def _option(args, flag):
    return args[args.index(flag) + 1]


def test_every_arm_gets_the_same_budget_and_the_evaluation_is_upstreams(tmp_path, monkeypatch):
    cfg = PolicyStudyConfig(output_dir=str(tmp_path), primary_arms=["none", "state"], pilot_seeds=2)
    study = PolicyStudy(cfg)
    monkeypatch.setattr(PolicyStudy, "stamo_model", lambda self: tmp_path / "stamo")
    runs = {name: study.finetune_args(*name) for name in cfg.pilot_runs}
    for flag in ("--max_steps", "--batch_size", "--config", "--vla_path", "--data.dataset_names"):
        assert len({_option(a, flag) for a in runs.values()}) == 1, flag  # equal budgets and data
    assert {_option(a, "--seed") for a in runs.values()} == {"0", "1"}
    assert _option(runs[("none", 0)], "--data.train_percent") == "100"  # held-out data is its own collection
    assert "--stamo_path" not in runs[("none", 0)] and "--stamo_path" in runs[("state", 0)]

    commands = []
    monkeypatch.setattr(PolicyStudy, "run", lambda self, args, log, env=None: commands.append(args))
    study.stage_pilot()
    evals = [a for a in commands if "eval" in a]
    assert len(evals) == 4 and len(commands) == 12  # finetune, heldout, eval per run
    for args in evals:
        assert _option(args, "--num_trials_per_task") == "25"  # the first 25 fixed initial states, every run
        assert "--max_steps" not in args and "--num_steps_wait" not in args  # the suite's 220 steps, 10 waits
        assert _option(args, "--task_ids") == "[0,1]"
    heldout = [a for a in commands if "heldout" in a]
    assert {_option(a, "--dataset_name") for a in heldout} == {"libero_spatial_heldout"}

    # every target kind's cache, of the fine-tuning and the held-out data; each arm reads its own kind
    commands.clear()
    cfg.secondary_arms = ["features", "untrained", "motion"]
    study.stage_targets()
    caches = {
        (_option(a, "--dataset_name"), a[a.index("--target") + 1] if "--target" in a else "state")
        for a in commands
    }
    assert caches == {
        (d, k)
        for d in ("libero_spatial_finetune", "libero_spatial_heldout")
        for k in ("state", "features", "untrained")
    }
    features = [a for a in commands if "features" in a]
    assert all("--vla_path" in a and "--stamo_path" not in a for a in features)
    assert _option(study.finetune_args("motion", 0), "--adapter.target") == "motion"
    assert "--data.target_cache_root" not in study.finetune_args("motion", 0)  # motion reads the state cache
    root = _option(study.finetune_args("features", 0), "--data.target_cache_root")
    assert {_option(a, "--output_dir") for a in features} == {
        f"{root}/libero_spatial_finetune",
        f"{root}/libero_spatial_heldout",
    }
    assert "--stamo_path" not in study.finetune_args("features", 0)

    cfg.perturbed_suites = ["libero_spatial_swap", "libero_spatial_lan"]
    steps = study.run_steps("state", 0)
    assert [s[0] for s in steps] == ["finetune", "heldout", "eval", "eval_perturbed"]
    assert _option(steps[-1][2], "--suites") == "[libero_spatial_swap,libero_spatial_lan]"
    assert _option(steps[-1][2], "--task_ids") == "[0,1]"


def _write_eval(out, suite_rates: dict[str, float], trials: int, tasks=(0, 1)) -> None:
    """An evaluation directory as the harness leaves it: per-episode records and a summary."""
    from stamo_vla.fileio import append_jsonl, write_json_atomic

    for suite, rate in suite_rates.items():
        wins = round(rate * trials * len(tasks))
        i = 0
        for task in tasks:
            for init in range(trials):
                rec = {"suite": suite, "task_id": task, "init_index": init, "instruction": "x", "steps": 9}
                video = f"videos/{suite}/t{task}-i{init}--success={i < wins}.mp4"
                rec.update(success=i < wins, wall_time_s=1.0, rank=0, error=None, video=video)
                append_jsonl(out / "results" / "rank0.jsonl", rec)
                if i >= wins:
                    (out / video).parent.mkdir(parents=True, exist_ok=True)
                    (out / video).write_bytes(b"mp4")
                i += 1
    write_json_atomic(out / "summary.json", {"overall": {}})


def _fake_study(tmp_path, rates: dict[tuple[str, int], float], seconds=600.0, **overrides):
    from stamo_vla.fileio import append_jsonl, write_json_atomic

    overrides.setdefault("stamo_path", str(tmp_path / "stamo_model"))
    cfg = PolicyStudyConfig(
        output_dir=str(tmp_path), primary_arms=["none", "state"], pilot_seeds=2, **overrides
    )
    study = PolicyStudy(cfg)
    for (arm, seed), rate in rates.items():
        name = study.run_id(arm, seed)
        _write_eval(study.evals / name / "standard", {"libero_spatial": rate}, cfg.trials_per_task)
        if cfg.perturbed_suites:
            suites = {s: rate / 2 for s in cfg.perturbed_suites}
            _write_eval(study.evals / name / "perturbed", suites, cfg.trials_per_task)
        run = study.finetune_root / name
        write_json_atomic(run / "heldout_metrics.json", {"samples": 9, "action_l1": 0.2 - rate / 10})
        (run / "adapter").mkdir(parents=True)
        for step in ("finetune", "heldout", "eval"):
            append_jsonl(study.out / "run_times.jsonl", {"run": name, "step": step, "seconds": seconds / 3})
    return study


PILOT = {("none", 0): 0.6, ("state", 0): 0.7, ("none", 1): 0.2, ("state", 1): 0.64}


def test_the_power_stage_fixes_the_seeds_before_any_further_run(tmp_path, monkeypatch):
    from stamo_vla.study import policy_study
    from stamo_vla.study import statistics as S

    monkeypatch.setattr(policy_study, "code_version", lambda: {"commit": "c" * 40, "dirty": False})
    study = _fake_study(tmp_path, PILOT, budget_hours=10.0)
    with pytest.raises(FileNotFoundError, match="power.json is missing; run the power stage"):
        study.stage_runs()
    study.stage_power()
    plan = json.loads((tmp_path / POWER_NAME).read_text())
    sd = S.pooled_sd(
        {
            "none": {0: [1] * 30 + [0] * 20, 1: [1] * 10 + [0] * 40},
            "state": {0: [1] * 35 + [0] * 15, 1: [1] * 32 + [0] * 18},
        }
    )
    assert plan["between_seed_sd"] == pytest.approx(sd)
    assert plan["required_seeds"] == S.seeds_for_effect(sd, 0.15, 0.05, 0.8) and plan["run_cost_s"] == 600.0
    # 10 h at 10 min a run covers 60 runs: 2 arms x required seeds fit, so nothing is budget-limited
    assert plan["seeds"] == {
        "none": list(range(plan["required_seeds"])),
        "state": list(range(plan["required_seeds"])),
    }
    assert "two-sided two-sample t-test" in plan["rule"] and plan["commit"] == "c" * 40

    started = []

    def fake_run(self, args, log, env=None):
        assert (tmp_path / POWER_NAME).is_file()  # written before any further run starts
        started.append(log)

    monkeypatch.setattr(PolicyStudy, "run", fake_run)
    study.stage_runs()
    finetunes = [name for name in started if name.startswith("finetune_")]
    assert finetunes[:2] == ["finetune_none_seed2", "finetune_state_seed2"]  # pilot runs are not repeated
    assert len(finetunes) == 2 * (plan["required_seeds"] - 2)


def test_the_budget_gives_primary_arms_first_and_secondary_arms_what_is_left():
    from stamo_vla.study.power import plan_seeds

    pilot = {
        "none": {0: [1] * 6 + [0] * 4, 1: [1] * 4 + [0] * 6},
        "state": {0: [1] * 5 + [0] * 5, 1: [1] * 5 + [0] * 5},
    }
    cfg = PolicyStudyConfig(
        primary_arms=["none", "state"], secondary_arms=["motion"], pilot_seeds=2, budget_hours=2.0
    )
    plan = plan_seeds(pilot, cfg, spent_s=3600.0, run_cost_s=600.0)  # 1 h left = 6 runs
    assert plan["required_seeds"] > 5 and plan["budget_limited"]
    assert (
        plan["seeds"]["none"] == plan["seeds"]["state"] == [0, 1, 2, 3, 4] and plan["seeds"]["motion"] == []
    )
    rich = plan_seeds(pilot, PolicyStudyConfig(**{**cfg.__dict__, "budget_hours": 200.0}), 3600.0, 600.0)
    n = rich["required_seeds"]
    assert rich["seeds"]["motion"] == list(range(n)) and not rich["budget_limited"]


FAKE_POWER = {
    "rule": "R",
    "between_seed_sd": 0.2,
    "required_seeds": 3,
    "budget_limited": False,
    "budget_s": 3600.0,
}
FAKE_POWER.update(run_cost_s=600.0, commit="c" * 40, seeds={"none": [0, 1, 2], "state": [0, 1, 2]})
FAKE_REPRODUCE = {
    "run": "none_seed2",
    "identical": True,
    "tensors": 7,
    "differing": 0,
    "missing": [],
    "max_abs_diff": 0,
}


def test_report_reads_every_number_from_the_run_files(tmp_path):
    pytest.importorskip("matplotlib")
    from stamo_vla.fileio import write_json_atomic
    from stamo_vla.study import statistics as S
    from stamo_vla.study.policy_report import write_report

    rates = {**PILOT, ("none", 2): 0.04, ("state", 2): 0.72}
    study = _fake_study(tmp_path, rates, perturbed_suites=["libero_spatial_swap"], videos_per_run=2)
    write_json_atomic(tmp_path / POWER_NAME, FAKE_POWER)
    write_json_atomic(tmp_path / "reproduce.json", FAKE_REPRODUCE)
    study.record_command(["stamo-vla", "study", "--config", "targets"])
    report = write_report(study).read_text()
    data = json.loads((tmp_path / "study.json").read_text())

    none = {s: [1] * round(r * 50) + [0] * (50 - round(r * 50)) for (a, s), r in rates.items() if a == "none"}
    state = {
        s: [1] * round(r * 50) + [0] * (50 - round(r * 50)) for (a, s), r in rates.items() if a == "state"
    }
    (cmp,) = data["comparisons"]  # only state vs none has both arms
    assert cmp["bootstrap"]["difference"] == pytest.approx(
        S.hierarchical_bootstrap(state, none)["difference"]
    )
    assert cmp["bootstrap"]["ci"] == pytest.approx(list(S.hierarchical_bootstrap(state, none)["ci"]))
    assert (
        cmp["permutation"]["p"] == pytest.approx(S.permutation_test(state, none)["p"])
        and cmp["permutation"]["paired"]
    )
    assert cmp["mixed_model"]["effect"] == pytest.approx(S.mixed_logistic(state, none)["effect"], abs=1e-6)
    assert (
        data["arms"]["none"]["collapse"]["seeds"] == [2]
        and data["arms"]["state"]["collapse"]["collapsed"] == 0
    )
    assert data["arms"]["state"]["standard"]["mean"] == pytest.approx((0.7 + 0.64 + 0.72) / 3)
    assert data["arms"]["state"]["perturbed"]["mean"] == pytest.approx(
        sum(round(r / 2 * 50) for r in (0.7, 0.64, 0.72)) / 150
    )
    assert data["heldout_l1_vs_success"]["rho"] == pytest.approx(-1.0)  # L1 made to fall as success rises
    assert len(data["videos"]["none_seed2"]) == 4 and (tmp_path / data["videos"]["none_seed2"][0]).is_file()

    assert "pooled" not in report.lower()  # no interval pools runs
    assert report.index("## Seeds, fixed by the power stage") < report.index("## Verdict as measured")
    # 3 paired seeds: the permutation test cannot reach 0.05 (2/8 at best), so nothing is decided
    assert cmp["permutation"]["p"] >= 0.25 and "not decided" in cmp["verdict"]
    assert f"`state` vs `none`: {100 * cmp['bootstrap']['difference']:5.1f} points" in report
    assert "`none_seed2`: 2/50 standard (task 0: 2/25, failures end after 9 steps, task 1: 0/25" in report
    assert "| none_seed2 (collapsed) |" in report and "reproduces it bit for bit" in report
    assert "Produced by `stamo-vla study --config targets`" in report and "Machine:" in report
    assert (tmp_path / "seeds.png").is_file()


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
    assert "No comparison has two evaluated arms yet." in report and "not evaluated" in report
    assert "The power stage has not run" in report and "The reproduce stage has not run." in report
    assert "collect 10.0 min (3 calls)" in report and "stamo 1.0 min (finishing call only)" in report
    assert "base 2.0 min (running)" in report and "total 13.0 min" in report
    assert "other values than the stages ran with" not in report
    # a report written with other options than the stages ran with says so
    write_json_atomic(
        marks / "collect.json", {"stage": "collect", "seconds": 600.0, "config": {"trials_per_task": 50}}
    )
    report = write_report(PolicyStudy(PolicyStudyConfig(output_dir=str(tmp_path)))).read_text()
    assert "other values than the stages ran with, for ['trials_per_task']" in report


def test_the_verdict_needs_the_interval_and_the_permutation_test_to_agree():
    from stamo_vla.study.policy_report import verdict

    assert verdict("state", (0.02, 0.3), 0.01) == "`state` helps"
    assert verdict("motion", (-0.3, -0.02), 0.03) == "`motion` hurts"
    assert verdict("state", (0.08, 0.63), 0.5).startswith(
        "not decided: the interval excludes 0 but the permutation"
    )
    assert verdict("state", (-0.1, 0.3), 0.01) == "not decided: the interval covers 0"


def test_a_retrain_is_compared_with_the_first_run_tensor_by_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    from stamo_vla.study.reproduce import compare_adapters

    tensors = {"lora_A": torch.arange(6.0).reshape(2, 3), "head": torch.ones(4)}
    for name in ("first", "same", "other"):
        (tmp_path / name).mkdir()
    save_file(tensors, str(tmp_path / "first" / "adapter_model.safetensors"))
    save_file(
        {k: v.clone() for k, v in tensors.items()}, str(tmp_path / "same" / "adapter_model.safetensors")
    )
    changed = {**tensors, "head": torch.ones(4) + torch.tensor([0, 0, 0.5, 0])}
    save_file(changed, str(tmp_path / "other" / "adapter_model.safetensors"))
    same = compare_adapters(tmp_path / "first", tmp_path / "same")
    assert same["identical"] and same["tensors"] == 2 and same["max_abs_diff"] == 0.0
    other = compare_adapters(tmp_path / "first", tmp_path / "other")
    assert not other["identical"] and other["differing"] == 1 and other["max_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="holds no .safetensors file"):
        compare_adapters(tmp_path / "first", tmp_path)


def test_perturbed_success_is_grouped_by_family_over_the_evaluated_base_tasks(tmp_path):
    from stamo_vla.fileio import append_jsonl, write_json_atomic
    from stamo_vla.study.policy_report import perturbed_outcomes

    study = PolicyStudy(PolicyStudyConfig(output_dir=str(tmp_path), eval_task_ids=[0, 1], trials_per_task=2))
    out = study.evals / "state_seed0" / "perturbed"
    # a suite whose task 5 perturbs base task 0, and whose task 0 perturbs base task 7 (not evaluated)
    for task, base, init, success in ((5, 0, 0, True), (5, 0, 1, False), (5, 0, 2, True), (0, 7, 0, True)):
        rec = {"suite": "libero_spatial_swap", "task_id": task, "init_index": init, "success": success}
        append_jsonl(
            out / "results" / "rank0.jsonl", {**rec, "family": "swap", "base_task_id": base, "steps": 3}
        )
    rec = {"suite": "libero_spatial_lan", "task_id": 1, "init_index": 0, "success": False, "steps": 3}
    append_jsonl(out / "results" / "rank0.jsonl", rec)  # no family written: grouped by its suite
    assert perturbed_outcomes(study, "state", 0) is None  # no summary yet: unfinished
    write_json_atomic(out / "summary.json", {})
    assert perturbed_outcomes(study, "state", 0) == {"swap": [1, 0], "libero_spatial_lan": [0]}


def test_a_run_step_is_refused_when_the_code_changed_under_a_running_stage(tmp_path, monkeypatch):
    from stamo_vla.fileio import append_jsonl
    from stamo_vla.study import policy_study

    study = PolicyStudy(PolicyStudyConfig(output_dir=str(tmp_path), stamo_path=str(tmp_path / "stamo")))
    append_jsonl(
        study.marks / "calls.jsonl", {"stage": "pilot", "event": "start", "commit": "a" * 40, "dirty": False}
    )
    monkeypatch.setattr(policy_study, "code_version", lambda: {"commit": "b" * 40, "dirty": False})
    ran = []
    monkeypatch.setattr(PolicyStudy, "run", lambda self, args, log, env=None: ran.append(log))
    with pytest.raises(MixedCommitsError, match="this code is b{40}"):
        study.run_one("none", 0)
    assert ran == []
    study.allow_mixed_commits = True
    study.run_one("none", 0)
    assert ran == ["finetune_none_seed0", "heldout_none_seed0", "eval_none_seed0"]
    assert {r["commit"] for r in read_jsonl(tmp_path / "run_times.jsonl")} == {"b" * 40}


def test_a_precision_arm_is_its_target_trained_under_bf16_autocast(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'none\+fp16': precision='fp16'"):
        PolicyStudyConfig(primary_arms=["none", "none+fp16"])
    with pytest.raises(ValueError, match=r"primary_arms/secondary_arms entry='lora'"):
        PolicyStudyConfig(primary_arms=["none", "lora+bf16"])
    cfg = PolicyStudyConfig(output_dir=str(tmp_path), primary_arms=["state", "state+bf16"], pilot_seeds=2)
    study = PolicyStudy(cfg)
    monkeypatch.setattr(PolicyStudy, "stamo_model", lambda self: tmp_path / "stamo")
    fp32, bf16 = study.finetune_args("state", 1), study.finetune_args("state+bf16", 1)
    assert _option(bf16, "--mixed_precision") == "bf16" and "--mixed_precision" not in fp32
    assert _option(bf16, "--adapter.target") == "state" and _option(bf16, "--run_dir").endswith(
        "state+bf16_seed1"
    )
    # everything else is the float32 arm's: same seed (data order, initialization), data, cache, StaMo model
    rest = [a for a in bf16 if a not in ("--mixed_precision", "bf16")]
    assert [a for a, b in zip(rest, fp32) if a != b] == [rest[rest.index("--run_dir") + 1]]
    commands = []
    monkeypatch.setattr(PolicyStudy, "run", lambda self, args, log, env=None: commands.append(args))
    study.stage_targets()
    assert len(commands) == 2  # one state cache per dataset serves both precisions


def _finish_stages(out, stages, commit):
    from stamo_vla.fileio import append_jsonl, write_json_atomic

    for stage in stages:
        append_jsonl(out / ".stages" / "calls.jsonl", {"stage": stage, "event": "start", "commit": commit})
        write_json_atomic(out / ".stages" / f"{stage}.json", {"seconds": 1.0, "calls": 1})


def test_a_study_reads_its_inputs_from_an_earlier_one_and_writes_nothing_there(tmp_path, monkeypatch):
    earlier, here = tmp_path / "targets", tmp_path / "precision"
    with pytest.raises(ValueError, match="is this study's own output_dir"):
        PolicyStudyConfig(output_dir=str(here), inputs_from=str(here))
    cfg = PolicyStudyConfig(
        output_dir=str(here), inputs_from=str(earlier), primary_arms=["none", "none+bf16"], pilot_seeds=2
    )
    study = PolicyStudy(cfg)
    assert (study.data, study.base_run, study.stamo_run) == (
        earlier / "data",
        earlier / "base",
        earlier / "stamo",
    )
    args = study.finetune_args("none+bf16", 0)
    assert _option(args, "--vla_path") == str(earlier / "base" / "model")
    assert _option(args, "--data.data_root_dir") == str(earlier / "data")
    assert _option(args, "--run_dir").startswith(str(here / "finetune"))

    with pytest.raises(
        FileNotFoundError, match=r"its collect stage has not finished .*targets/.stages/collect.json"
    ):
        study.stage_collect()
    _finish_stages(earlier, ("collect", "stamo", "base", "targets"), "a" * 40)
    commands = []
    monkeypatch.setattr(PolicyStudy, "run", lambda self, args, log, env=None: commands.append(args))
    for stage in ("collect", "stamo", "base", "targets"):
        study.stage_fn(stage)()
    assert commands == []  # nothing made again, nothing written into the earlier study
    before = sorted(p.relative_to(earlier) for p in earlier.rglob("*"))

    cfg.secondary_arms = ["features"]  # the earlier study never cached the features target
    with pytest.raises(FileNotFoundError, match=r"no features target cache of libero_spatial_finetune"):
        study.stage_targets()
    assert sorted(p.relative_to(earlier) for p in earlier.rglob("*")) == before

    from stamo_vla.study.policy_report import provenance

    prov = provenance(study)
    assert prov["inputs_from"] == {
        "output_dir": str(earlier),
        "versions": {"a" * 40: ["collect", "stamo", "base", "targets"]},
    }


def test_the_report_compares_every_bf16_arm_with_its_float32_arm(tmp_path):
    from stamo_vla.study.policy_report import comparisons

    runs = [
        {"arm": arm, "seed": seed, "standard_outcomes": [1] * k + [0] * (10 - k), "perturbed_outcomes": None}
        for arm, ks in (("none", (3, 5, 4)), ("none+bf16", (4, 5, 3)), ("state", (6, 7, 6)))
        for seed, k in enumerate(ks)
    ]
    arms = {a: {"collapse": {"collapsed": 0, "runs": 3}} for a in ("none", "none+bf16", "state")}
    pairs = [(c["a"], c["b"]) for c in comparisons(runs, arms)]
    assert pairs == [("state", "none"), ("none+bf16", "none")]
