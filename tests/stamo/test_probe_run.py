"""`stamo-vla probe` and `stamo-vla train-action-decoder` end to end on a small RLDS dataset."""

import json

import numpy as np
import pytest
import torch

from stamo_vla.study.probe_run import ProbeConfig, run


def episode(i, length=10):
    rng = np.random.default_rng(i)
    action = np.zeros((length, 7), np.float32)
    action[:, 0] = rng.uniform(-1, 1, length)
    action[:, 6] = -1.0
    frames = np.full((length, 256, 256, 3), 180, np.uint8)
    x = 128.0
    for t in range(length):
        xi = int(np.clip(x, 24, 231))
        frames[t, 100:140, xi - 20 : xi + 20] = (30, 30, 220)
        x += 10 * action[t, 0]
    return {
        "image": frames,
        "wrist_image": frames,
        "state": np.zeros((length, 8), np.float32),
        "joint_state": np.zeros((length, 7), np.float32),
        "action": action,
        "language_instruction": "push the blue block",
        "file_path": f"/p/{i}.hdf5",
    }


@pytest.mark.slow
def test_probe_writes_json_table_and_plot(tmp_path):
    from stamo_vla.data.rlds_writer import write_rlds_dataset
    from stamo_vla.stamo import StaMoEncoder, tiny_config

    write_rlds_dataset((episode(i) for i in range(5)), tmp_path / "data", "toy_probe")
    torch.manual_seed(0)
    StaMoEncoder(tiny_config()).save_pretrained(tmp_path / "stamo")
    cfg = ProbeConfig(
        data_root_dir=str(tmp_path / "data"),
        dataset_name="toy_probe",
        stamo_path=str(tmp_path / "stamo"),
        output_dir=str(tmp_path / "probe"),
        horizons=[1, 2],
        max_steps=50,
        hidden_size=32,
    )
    results = run(cfg)
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert saved["mse"] == results["mse"] and set(saved["mse"]) == {"1", "2"}
    assert saved["config"]["seeds"] == [0, 1, 2] and saved["num_episodes"] == 5
    assert "untrained_encoder" in saved["inputs"] and "proprio_delta" in saved["inputs"]
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 1000
    md = (tmp_path / "probe" / "probe.md").read_text()
    assert (
        "| input (3 splits) | k=1 | k=2 |" in md
        and "| untrained_encoder | " in md
        and "| proprio_delta | " in md
    )
    with pytest.raises(ValueError, match="horizon k=10 is not shorter"):
        run(ProbeConfig(**{**saved["config"], "horizons": [10]}))


@pytest.mark.slow
def test_action_decoder_recipe_trains_saves_and_decodes(tmp_path):
    from stamo_vla.data.rlds_writer import write_rlds_dataset
    from stamo_vla.stamo import StaMoEncoder, tiny_config
    from stamo_vla.stamo.action_decoder import ActionDecoder
    from stamo_vla.training.action_decoder_training import TrainActionDecoderConfig, train

    write_rlds_dataset((episode(i) for i in range(4)), tmp_path / "data", "toy_dec")
    torch.manual_seed(0)
    StaMoEncoder(tiny_config()).save_pretrained(tmp_path / "stamo")
    cfg = TrainActionDecoderConfig(
        data_root_dir=str(tmp_path / "data"),
        dataset_name="toy_dec",
        stamo_path=str(tmp_path / "stamo"),
        horizon=2,
        max_steps=30,
        hidden_size=32,
        num_layers=2,
        output_dir=str(tmp_path / "dec"),
    )
    metrics = train(cfg)
    assert metrics["test_mse"] >= 0 and len(metrics["test_episodes"]) == 1
    dec = ActionDecoder.from_pretrained(tmp_path / "dec")
    encoder = StaMoEncoder.from_pretrained(tmp_path / "stamo")
    chunk = dec.decode(encoder, torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert chunk.shape == (1, 2, 7)
    stats = json.loads((tmp_path / "dec" / "dataset_statistics.json").read_text())
    assert stats["toy_dec"]["action"]["mask"] == [True] * 6 + [False]
    with pytest.raises(ValueError, match="longer than horizon=20"):
        train(TrainActionDecoderConfig(**{**cfg.__dict__, "horizon": 20}))
