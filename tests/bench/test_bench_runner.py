"""The benchmark runner: every module is registered, results are written as JSON + markdown."""

import json
from pathlib import Path

import pytest

from stamo_vla import cli
from stamo_vla.bench import runner


def test_every_bench_module_is_registered():
    modules = {p.stem.removeprefix("bench_") for p in Path(runner.__file__).parent.glob("bench_*.py")}
    assert modules == set(runner.BENCHMARKS)


def test_markdown_flattens_nested_results():
    md = runner.markdown({"x": {"ratio": 2.5, "nested": {"a_s": 0.1234567}, "note": "ok"}}, {"cpu_count": 2})
    assert "| ratio | 2.5 |" in md and "| nested.a_s | 0.1235 |" in md and "cpu_count=2" in md


def test_unknown_benchmark_is_refused(capsys):
    assert cli.main(["bench", "--only", "[nope]"]) == 2
    assert "only entry='nope' is not valid" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown(tmp_path):
    assert runner.main(["--quick", "true", "--only", "[adapter]", "--output_dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    overhead = data["results"]["adapter"]["tiny"]["train_step_overhead"]
    assert set(overhead) == {"stamo_cached_vs_plain_lora", "stamo_live_encoder_vs_plain_lora"}
    assert data["machine"]["cpu_count"] >= 1
    assert "## adapter" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_train_bench_compares_old_and_new_paths_per_stage():
    from stamo_vla.bench import bench_train

    result = bench_train.run(quick=True, recipes=("finetune",))["finetune"]
    stages = {f"{s}_s" for s in bench_train.STAGES}
    for variant in bench_train.VARIANTS:
        row = result[variant]
        assert stages <= set(row) and all(row[k] >= 0 for k in stages)
        assert row["step_s"] > 0 and row["samples_per_s"] == pytest.approx(2 / row["step_s"])
    assert result["speedup_new_vs_old"] == pytest.approx(result["old"]["step_s"] / result["new"]["step_s"])
    roof = result["roofline"]
    assert roof["step_gflop"] > 0 and roof["peak_fp32_gflops"] > 0 and roof["peak_bf16_gflops"] > 0
    assert roof["achieved_gflops"] == pytest.approx(roof["step_gflop"] / result["new"]["step_s"])
