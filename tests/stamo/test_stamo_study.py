"""`stamo-vla stamo-study` end to end on a toy RLDS dataset (collection skipped: the dataset exists)."""

import json

import numpy as np
import pytest

from stamo_vla.study.stamo_study import STAGES, StaMoStudy, StaMoStudyConfig
from stamo_vla.training.backbone_pretrain import BackbonePretrainConfig


def toy_episode(i, length=12):
    rng = np.random.default_rng(i)
    action = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
    frames = np.full((length, 256, 256, 3), 90 + 20 * (i % 3), np.uint8)
    state = np.zeros((length, 8), np.float32)
    x = 80.0 + 12 * i
    for t in range(length):
        xi = int(np.clip(x, 32, 223))
        frames[t, 80:144, xi - 24 : xi + 24] = (220, 60, 30)
        state[t, 0] = x
        x += 8 * action[t, 0]
    return {
        "image": frames,
        "wrist_image": frames,
        "state": state,
        "joint_state": np.zeros((length, 7), np.float32),
        "action": action,
        "language_instruction": f"task {i % 2}",
        "file_path": f"/toy/{i}.hdf5",
    }


def test_config_validation_names_field_and_allowed_values():
    with pytest.raises(ValueError, match=r"stages=\['nope'\] is not valid; allowed"):
        StaMoStudyConfig(stages=["nope"])
    with pytest.raises(ValueError, match="backbones=\\['imagenet'\\] is not valid"):
        StaMoStudyConfig(backbones=["imagenet"])
    with pytest.raises(ValueError, match="task_ids=\\[0\\] is not valid"):
        StaMoStudyConfig(task_ids=[0])


@pytest.mark.slow
def test_study_runs_every_stage_resumably_and_writes_small_outputs(tmp_path):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    out = tmp_path / "study"
    write_rlds_dataset((toy_episode(i) for i in range(8)), out / "data", "libero_spatial_no_noops")
    cfg = StaMoStudyConfig(
        output_dir=str(out),
        results_dir=str(tmp_path / "results"),
        frame_stride=1,
        heldout_episodes=2,
        num_eval_images=4,
        vae_fit_steps=3,
        vae_min_gain_db=-100.0,
        backbone_pretrain=BackbonePretrainConfig(max_steps=2, batch_size=4, eval_steps=0),
        stamo_steps=4,
        stamo_eval_steps=2,
        probe_horizons=[1, 2],
        probe_seeds=[0, 1],
        probe_max_steps=10,
    )
    study = StaMoStudy(cfg)
    study.main()
    split = json.loads((out / "split.json").read_text())
    assert len(split["heldout_episodes"]) == 2 and split["num_heldout_frames"] == 24
    results = json.loads((tmp_path / "results" / "stamo_study.json").read_text())
    assert set(results["reconstruction"]) == {"random_backbone_seed0", "pretrained_backbone_seed0"}
    probe = results["probe"]
    assert "untrained_encoder[pretrained backbone]" in probe["inputs"] and "proprio_delta" in probe["inputs"]
    assert set(probe["protocols"]) == {"random_episode_split", "leave_one_task_out"}
    report = (tmp_path / "results" / "STAMO_STUDY.md").read_text()
    assert "own − shuffled" in report and "mean_predictor" in report
    assert {p.suffix for p in (tmp_path / "results").iterdir()} <= {".json", ".md", ".png"}
    # the pretrained backbone is a transformers checkpoint, frozen by path in the StaMo run
    run_cfg = (out / "stamo" / "pretrained_backbone_seed0" / "config.yaml").read_text()
    assert str((out / "backbone").resolve()) in run_cfg
    # a rerun skips every finished stage
    times = StaMoStudy(cfg).main()
    assert set(times) == set(STAGES)
    assert all((out / ".stages" / f"{s}.json").is_file() for s in STAGES)
