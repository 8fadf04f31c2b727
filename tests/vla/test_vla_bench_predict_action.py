"""stamo_vla/bench/bench_predict_action.py: batched and serial decoding measured side by side, same actions."""

import pytest


@pytest.mark.slow
def test_bench_quick_reports_both_modes(capsys):
    from stamo_vla.bench.bench_predict_action import run

    # the mid preset is left to the CLI run: under a shared 2-core CPU it alone takes ~1 minute
    out = run(quick=True, presets=("tiny",))
    assert set(out["results"]) == {"tiny"}
    for name, r in out["results"].items():
        assert r["batch_size"] == 8 and r["same_actions"] is True
        assert r["batched_s"] > 0 and r["serial_s"] > 0
        assert out["ratio"][name] == pytest.approx(r["serial_s"] / r["batched_s"])
        assert r["batched_obs_per_s"] == pytest.approx(8 / r["batched_s"])
    table = capsys.readouterr().out
    assert "speedup" in table and "tiny" in table
    with pytest.raises(ValueError, match="unknown"):
        run(quick=True, presets=("huge",))
