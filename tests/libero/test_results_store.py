"""Results store, Wilson interval, summaries: durability, resume bookkeeping and the numbers reported."""

import json

import pytest

from stamo_vla.libero.results import (
    EpisodeRecord,
    ResultsStore,
    package_versions,
    summarize,
    summary_markdown,
    wilson_interval,
    write_summary,
)


def _rec(suite="libero_spatial", task=0, init=0, success=True, steps=10, rank=0):
    return EpisodeRecord(suite, task, init, f"task {task}", success, steps, 1.5, rank)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (42, 50, 0.7149, 0.9166)],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 7)
    assert lo < 3 / 7 < hi
    with pytest.raises(ValueError, match="successes=4, n=3"):
        wilson_interval(4, 3)


def test_store_round_trip_and_ranks(tmp_path):
    a, b = ResultsStore(tmp_path, rank=0), ResultsStore(tmp_path, rank=1)
    a.append(_rec(init=0))
    b.append(_rec(init=1, success=False, rank=1))
    a.append(_rec(init=0, success=False))  # duplicate key: the first record wins
    loaded = sorted(ResultsStore(tmp_path).load(), key=lambda r: r.key)
    assert [r.key for r in loaded] == [("libero_spatial", 0, 0), ("libero_spatial", 0, 1)]
    assert [r.success for r in loaded] == [True, False]
    assert b.completed() == {("libero_spatial", 0, 0), ("libero_spatial", 0, 1)}


def test_torn_line_is_ignored_and_repaired_before_appending(tmp_path):
    store = ResultsStore(tmp_path, rank=0)
    store.append(_rec(init=0))
    with open(store.path, "a") as f:
        f.write('{"suite": "libero_spatial", "task_id": 0, "init_in')  # killed mid-write
    assert store.completed() == {("libero_spatial", 0, 0)}
    resumed = ResultsStore(tmp_path, rank=0)
    resumed.append(_rec(init=1))
    # without the repair the new record would be glued onto the torn line and lost
    assert resumed.completed() == {("libero_spatial", 0, 0), ("libero_spatial", 0, 1)}
    assert all(json.loads(line) for line in store.path.read_text().splitlines())


def test_summary_counts_and_intervals():
    records = [_rec(task=0, init=i, success=i < 3) for i in range(4)]
    records += [_rec(suite="libero_object", task=1, init=i, success=True, steps=20) for i in range(2)]
    expected = [r.key for r in records] + [("libero_object", 1, 2)]
    s = summarize(records, expected)
    assert s["overall"]["episodes"] == 6 and s["overall"]["successes"] == 5
    assert s["missing_episodes"] == 1 and s["expected_episodes"] == 7
    spatial = s["suites"]["libero_spatial"]
    assert spatial["success_rate"] == 0.75
    assert (spatial["ci95_low"], spatial["ci95_high"]) == wilson_interval(3, 4)
    assert spatial["tasks"]["0"]["instruction"] == "task 0"
    assert s["suites"]["libero_object"]["mean_steps"] == 20
    assert s["suite_average"] == pytest.approx((0.75 + 1.0) / 2)
    # records outside the plan are left out
    extra = summarize([*records, _rec(task=9)], expected)
    assert extra["overall"] == s["overall"]


def test_summary_is_order_independent_and_written_atomically(tmp_path):
    records = [_rec(task=t, init=i, success=(t + i) % 2 == 0) for t in range(2) for i in range(3)]
    s1 = write_summary(tmp_path, records)
    s2 = summarize(list(reversed(records)))
    assert s1 == s2
    assert json.loads((tmp_path / "summary.json").read_text()) == s1
    md = (tmp_path / "summary.md").read_text()
    assert "| 0 | task 0 | 2/3 | 66.7 |" in md
    assert "| **all** | 3/6 | 50.0 |" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]


def test_incomplete_summary_says_how_to_finish():
    md = summary_markdown(summarize([_rec()], [("libero_spatial", 0, 0), ("libero_spatial", 0, 1)]))
    assert "1 of 2 planned episodes have no record" in md


def test_package_versions_reads_metadata_without_importing():
    import subprocess
    import sys

    versions = package_versions(["torch", "definitely-not-installed-xyz"])
    assert versions["definitely-not-installed-xyz"] is None
    assert versions["torch"] and versions["torch"][0].isdigit()
    code = (
        "import sys; from stamo_vla.libero.results import package_versions; v = package_versions();"
        "print(v['mujoco'] is not None, [m for m in ('torch', 'mujoco', 'libero', 'tensorflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True []"
