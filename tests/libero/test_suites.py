"""LIBERO-PRO suites: name resolution (base suite, family, step budget), the installed registry, task mapping,
missing resources, and the per-family summary with Wilson intervals."""

import pytest

from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.evaluation_policies import ScriptedPolicyConfig
from stamo_vla.libero.results import EpisodeRecord, summarize, summary_markdown, wilson_interval
from stamo_vla.libero.suites import resolve_suite, suite_family


@pytest.mark.parametrize(
    ("name", "base", "family", "steps"),
    [
        ("libero_spatial", "libero_spatial", "none", 220),
        ("libero_spatial_swap", "libero_spatial", "swap", 220),
        ("libero_spatial_object", "libero_spatial", "object", 220),
        ("libero_spatial_lan", "libero_spatial", "language", 220),
        ("libero_spatial_task", "libero_spatial", "task", 220),
        ("libero_spatial_env", "libero_spatial", "environment", 220),
        ("libero_spatial_with_mug", "libero_spatial", "distractor", 220),
        ("libero_spatial_object_ood", "libero_spatial", "object_ood", 220),
        ("libero_object_object", "libero_object", "object", 280),
        ("libero_object_object_ood", "libero_object", "object_ood", 280),
        ("libero_goal_lan", "libero_goal", "language", 300),
        ("libero_10_swap", "libero_10", "swap", 520),
        ("libero_10_with_milk", "libero_10", "distractor", 520),
        ("libero_object_triggered_episode", "libero_object", "triggered_episode", 280),
    ],
)
def test_resolve_suite_names_base_family_and_budget(name, base, family, steps):
    info = resolve_suite(name)
    assert (info.name, info.base_suite, info.family, info.max_steps) == (name, base, family, steps)
    assert info.perturbed == (family != "none")
    assert suite_family(name) == family


@pytest.mark.parametrize("name", ["libero_mine", "libero_100", "libero_spatial_", "spatial_swap", "libero"])
def test_names_that_perturb_no_base_suite_are_refused(name):
    with pytest.raises(
        ValueError, match=rf"suite='{name}' perturbs none of the base suites \['libero_spatial'"
    ):
        resolve_suite(name)
    assert suite_family(name) == name


def _rec(suite, task=0, init=0, success=True, error=None):
    return EpisodeRecord(suite, task, init, f"task {task}", success, 30, 1.0, error=error)


def test_summary_reports_each_suite_and_each_family_with_wilson_intervals():
    records = [_rec("libero_spatial", init=i, success=i < 3) for i in range(4)]
    records += [_rec("libero_spatial_swap", init=i, success=i == 0) for i in range(4)]
    records += [_rec("libero_object_swap", task=1, init=i, success=True) for i in range(2)]
    records += [
        _rec("libero_spatial_lan", init=0, success=False),
        _rec("libero_spatial_lan", init=1, error="boom"),
    ]
    s = summarize(records)

    swap = s["suites"]["libero_spatial_swap"]
    assert (swap["base_suite"], swap["family"], swap["successes"], swap["episodes"]) == (
        "libero_spatial",
        "swap",
        1,
        4,
    )
    assert (s["suites"]["libero_spatial"]["family"], s["suites"]["libero_spatial"]["base_suite"]) == (
        "none",
        "libero_spatial",
    )
    assert list(s["families"]) == ["none", "language", "swap"]  # the base suites first, then by name
    fam = s["families"]["swap"]
    assert fam["suites"] == ["libero_object_swap", "libero_spatial_swap"]
    assert (fam["successes"], fam["episodes"]) == (3, 6)
    assert (fam["ci95_low"], fam["ci95_high"]) == wilson_interval(3, 6)
    lan = s["families"]["language"]  # an errored episode is counted apart, not as a failure
    assert (lan["successes"], lan["episodes"], lan["errors"]) == (0, 1, 1)
    assert (lan["ci95_low"], lan["ci95_high"]) == wilson_interval(0, 1)
    assert s["families"]["none"]["successes"] == 3

    md = summary_markdown(s)
    assert "Perturbation family `swap` of libero_spatial." in md
    low, high = wilson_interval(3, 6)
    row = f"| swap | libero_object_swap, libero_spatial_swap | 3/6 | 50.0 | [{100 * low:.1f}, {100 * high:.1f}] | 0 |"
    assert row in md


def test_base_suites_alone_keep_the_summary_without_a_family_table():
    s = summarize([_rec("libero_spatial"), _rec("libero_goal", success=False)])
    assert list(s["families"]) == ["none"]
    assert "Perturbation families" not in summary_markdown(s)


def test_records_written_before_families_get_them_from_the_suite_name():
    old = {"suite": "libero_goal_task", "task_id": 2, "init_index": 0, "instruction": "x", "success": True}
    record = EpisodeRecord.from_dict({**old, "steps": 3, "wall_time_s": 1.0})
    assert (record.base_suite, record.family, record.base_task_id) == ("libero_goal", "task", None)
    assert EpisodeRecord.from_dict(record.to_dict()) == record


def test_eval_config_budget_of_a_perturbed_suite_is_its_base_suites():
    pytest.importorskip("libero")
    cfg = EvalConfig(
        policy=ScriptedPolicyConfig(), suites=["libero_spatial_swap", "libero_10_lan", "libero_goal"]
    )
    assert [cfg.max_steps_for(s) for s in cfg.suites] == [220, 520, 300]
    assert (
        EvalConfig(policy=ScriptedPolicyConfig(), suites=["libero_spatial_task"], max_steps=7).max_steps_for(
            "libero_spatial_task"
        )
        == 7
    )


# ----------------------------------------------------------------------------- the installed benchmark
@pytest.fixture(scope="module")
def E():
    pytest.importorskip("libero")
    from stamo_vla.libero import env

    return env


def test_registry_lists_the_libero_pro_suites(E):
    names = E.registered_suites()
    for family in ("swap", "object", "lan", "task", "env", "with_mug"):
        assert f"libero_spatial_{family}" in names
    assert set(E.suite_names()) <= set(names)
    assert "libero_mine" not in names  # registered, but perturbs no base suite: no step budget


def test_unknown_and_unusable_suite_names_say_what_is_defined(E):
    with pytest.raises(
        ValueError, match=r"suites='libero_spatial_swp' is not valid; .*Did you mean 'libero_spatial_swap'"
    ):
        EvalConfig(policy=ScriptedPolicyConfig(), suites=["libero_spatial_swp"])
    with pytest.raises(ValueError, match=r"suite='libero_mine' perturbs none of the base suites"):
        E.check_suite("libero_mine")
    with pytest.raises(ValueError, match=r"allowed: \[.*'libero_goal_swap'"):
        E.check_suite("libero_goal_sawp")


def test_task_order_names_and_instructions_map_to_the_base_suite(E):
    n = E.task_count("libero_spatial")
    for suite in (
        "libero_spatial_swap",
        "libero_spatial_object",
        "libero_spatial_lan",
        "libero_spatial_task",
    ):
        assert E.task_count(suite) == n
        assert [E.get_task(suite, t).name for t in range(n)] == [
            E.get_task("libero_spatial", t).name for t in range(n)
        ]
        assert [E.base_task_id(suite, t) for t in range(n)] == list(range(n))
    # swap / object keep the benchmark instruction; language / task prompt with the BDDL's rewritten one
    base = E.task_instruction("libero_spatial", 0)
    assert (
        E.task_instruction("libero_spatial_swap", 0) == E.task_instruction("libero_spatial_object", 0) == base
    )
    lan = E.task_instruction("libero_spatial_lan", 0)
    assert lan == E.bddl_language("libero_spatial_lan", 0) and lan != base
    assert "not between" in E.task_instruction("libero_spatial_task", 0)
    # the milk distractor suite renames and reorders the tasks: matched through the base BDDL instructions
    milk = [E.base_task_id("libero_spatial_with_milk", t) for t in range(n)]
    assert sorted(milk) == list(range(n)) and milk[:3] == [0, 2, 4]


def test_missing_resources_are_named_before_anything_runs(E):
    E.check_task_ready("libero_spatial_swap", 0, 50)
    with pytest.raises(FileNotFoundError, match=r"libero_spatial_env task 0: its BDDL file .* is missing"):
        E.check_task_ready("libero_spatial_env", 0)
    with pytest.raises(
        ValueError, match=r"libero_spatial_with_milk task 0 has 10 initial states .* 20 trials"
    ):
        E.check_task_ready("libero_spatial_with_milk", 0, 20)
    with pytest.raises(FileNotFoundError, match=r"red_sticker"):
        E.check_task_ready("libero_spatial_with_red_stick", 0)
