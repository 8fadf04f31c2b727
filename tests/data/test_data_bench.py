"""The RLDS loader benchmark runs end to end on the data it makes and reports what it promises."""

from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_bench_rlds_loader_quick(capsys):
    from stamo_vla.bench.bench_rlds_loader import run

    out = run(quick=True)
    assert out["episodes"] == 4 and out["batch_size"] == 4
    assert set(out["results"]) == {20, 80}
    for res in out["results"].values():
        assert set(res["checkpoints"]) == {5, 20}
        for row in res["checkpoints"].values():
            assert row["samples_per_s"] > 0 and math.isfinite(row["rss_growth_mb"])
            assert row["peak_rss_growth_mb"] >= row["rss_growth_mb"] - 1e-9
    assert "samples/s" in capsys.readouterr().out
