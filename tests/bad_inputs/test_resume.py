"""Resume cases of the bad-input catalogue: interrupted collections, changed optimizer settings, another StaMo
encoder, a resume killed while it records its config."""

from __future__ import annotations

import json

import pytest


@pytest.mark.sim
@pytest.mark.slow
def test_an_interrupted_128_px_collection_resumes_through_the_demo_command(tmp_path, make_episode):
    from stamo_vla.data.rlds_writer import RLDSShardWriter
    from stamo_vla.demo import Demo, DemoConfig
    from stamo_vla.libero.collect import MANIFEST_NAME

    cfg = DemoConfig(output_dir=str(tmp_path / "demo"), task_ids=[0], episodes_per_task=1, num_workers=1)
    demo = Demo(cfg)
    # what a 128 px collection of an earlier version left when it was killed before building the dataset: its
    # episode staged, the manifest without the render size
    episode = {**make_episode(0), "file_path": "libero_spatial/task0/fresh_000"}
    RLDSShardWriter(demo.data, demo.dataset).add_episode(episode)
    record = {"file_path": episode["file_path"], "success": True, "steps": 9, "kept_steps": 8}
    record.update({"retries": 0, "crashed": False, "placement_seed": 1_000_000, "init_distance": 0.1})
    old = {
        "suite": "libero_spatial",
        "name": demo.dataset,
        "init_states": "fresh",
        "episodes": {"0:0": record},
    }
    manifest_path = demo.data / demo.dataset / MANIFEST_NAME
    manifest_path.write_text(json.dumps(old))

    demo.collect()  # resumes: the episode is kept, nothing re-runs, the dataset is built
    resumed = json.loads(manifest_path.read_text())
    assert resumed == {**old, "render_resolution": 128}
    assert (demo.data / demo.dataset / "1.0.0" / "dataset_info.json").is_file()
    log = (demo.out / "logs" / "collect.log").read_text()
    assert "predates the recording of the render size" in log and "--render_resolution 128" in log

    demo.collect()  # the manifest it wrote resumes too, without a warning
    assert json.loads(manifest_path.read_text()) == resumed
    assert (demo.out / "logs" / "collect.log").read_text().count("predates") == 1
