"""stamo_vla/bench/bench_oft.py: OFT vs token actions/s side by side on the same tiny model."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_oft_quick_reports_both_modes_side_by_side():
    from stamo_vla.bench.bench_oft import CHUNK, run

    out = run(quick=True, presets=("tiny",))
    r = out["results"]["tiny"]
    assert r["oft_chunk_shape"] == [8, CHUNK, 7]
    assert r["oft_actions_per_s"] == pytest.approx(8 * CHUNK / r["oft_s_per_call"])
    assert r["tokens_actions_per_s"] == pytest.approx(8 / r["tokens_s_per_call"])
    assert out["speedup"]["tiny"] == pytest.approx(r["oft_actions_per_s"] / r["tokens_actions_per_s"])
    assert out["stamo_head_mlp_fraction"]["tiny"] > 0
    with pytest.raises(ValueError, match="presets: unknown \\['huge'\\]"):
        run(quick=True, presets=("huge",))
