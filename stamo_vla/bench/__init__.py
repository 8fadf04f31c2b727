"""Benchmarks: each ``bench_<name>.py`` exposes ``run(quick: bool) -> dict`` and measures its comparisons side
by side in one run; ``stamo-vla bench`` (`stamo_vla.bench.runner`) runs them and writes JSON + markdown."""
