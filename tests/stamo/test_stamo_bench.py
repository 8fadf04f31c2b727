import pytest

from stamo_vla.bench import bench_stamo


def test_bench_reports_encoder_throughput_and_decoder_time(capsys):
    out = bench_stamo.run(quick=True, presets=("tiny",))
    r = out["results"]["tiny"]
    assert r["encoder_images_per_s"] > 0 and r["decoder_s_per_image"] > 0
    assert r["state"] == [2, 64] and r["image_size"] == 64
    assert "encode img/s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown \\['huge'\\]"):
        bench_stamo.run(quick=True, presets=("huge",))
