"""Files that are missing, truncated or invalid name themselves and the fix; adapters are never half-loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from stamo_vla import cli
from stamo_vla.adapter import load_adapter
from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor
from stamo_vla.vla.loading import resolve_directory

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- adapter without its config
def test_adapter_weights_without_adapter_config_are_refused_everywhere(
    tmp_path, tiny_base_dir, tiny_adapter_dir, capsys
):
    broken = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, broken)
    (broken / "adapter_config.json").unlink()
    base = OpenVLAForActionPrediction.from_pretrained(tiny_base_dir)
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors.*no adapter_config\.json"):
        load_adapter(base, broken)  # run_libero_eval --adapter_dir goes through load_adapter too
    merge = ["merge", "--vla_path", str(tiny_base_dir), "--adapter_dir", str(broken)]
    assert cli.main([*merge, "--output_dir", str(tmp_path / "m")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------- files
def test_missing_tokenizer_names_the_file_not_sentencepiece(tmp_path, tiny_base_dir):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_base_dir, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither tokenizer\.json nor tokenizer\.model") as err:
        OpenVLAProcessor.from_pretrained(copy)
    assert "sentencepiece" not in str(err.value)
    (copy / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match="tokenizer.json / tokenizer_config.json is truncated or invalid"):
        OpenVLAProcessor.from_pretrained(copy)


def test_truncated_preprocessor_config_names_itself(tmp_path, tiny_base_dir):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_base_dir, copy)
    (copy / "preprocessor_config.json").write_text('{"image_resize_strategy": ')
    with pytest.raises(ValueError, match=r"preprocessor_config\.json is not valid JSON"):
        OpenVLAProcessor.from_pretrained(copy)


def test_truncated_statistics_file_names_itself(tmp_path):
    from stamo_vla.data.statistics import load_dataset_statistics

    path = tmp_path / "dataset_statistics.json"
    path.write_text('{"toy": {"action": ')
    with pytest.raises(ValueError, match=r"dataset_statistics\.json' is not valid JSON.*stamo-vla stats"):
        load_dataset_statistics(path)


@pytest.mark.slow
def test_cache_targets_rerun_re_encodes_a_truncated_shard(tmp_path, toy_rlds_root):
    import torch

    from stamo_vla.data.episodes import episode_id, episode_key
    from stamo_vla.data.rlds import iter_episodes
    from stamo_vla.data.target_cache import StaleTargetCacheError, TargetCache, build_target_cache
    from stamo_vla.stamo import StaMoEncoder, tiny_config

    torch.manual_seed(0)
    encoder = StaMoEncoder(tiny_config()).eval()
    out = build_target_cache(toy_rlds_root, "toy_video", encoder, tmp_path / "cache", batch_size=8)
    episode = next(iter_episodes(toy_rlds_root, "toy_video", load_images=False))
    shard = out / "episodes" / f"{episode_key(episode_id(episode))}.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])  # a copy or a disk that stopped halfway
    cache = TargetCache.open(out, toy_rlds_root, "toy_video")
    with pytest.raises(StaleTargetCacheError, match=f"{shard.name} is truncated.*Rerun"):
        cache.load_episode(episode)
    with pytest.warns(UserWarning, match=f"{shard.name}.*encoding that episode again"):
        build_target_cache(toy_rlds_root, "toy_video", encoder, out, batch_size=8)
    states = TargetCache.open(out, toy_rlds_root, "toy_video").load_episode(episode)
    assert states.shape[0] == 8 and np.all(np.isfinite(states))


# -------------------------------------------------------------------------------------- paths, Hub
def test_a_missing_local_path_with_one_slash_is_never_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo: calls.append(repo) or "/nowhere")
    with pytest.raises(FileNotFoundError, match=r"'runs/merged' does not exist.*hf://"):
        resolve_directory("runs/merged")
    assert calls == []
    resolve_directory("hf://openvla/openvla-7b")  # the Hub stays available through an explicit id
    assert calls == ["openvla/openvla-7b"]


# ----------------------------------------------------------------------------------- prompts, images
def test_prompts_longer_than_the_context_are_refused(tiny_base_dir):
    processor = OpenVLAProcessor.from_pretrained(tiny_base_dir)
    limit = processor.tokenizer.model_max_length
    with pytest.raises(ValueError, match=f"longer than the model's context of {limit} tokens"):
        processor.prompt_ids("pick up the bowl " * limit)
    with pytest.raises(ValueError, match="longer than the model's context"):
        processor("x " * limit, np.zeros((224, 224, 3), np.uint8))


@pytest.mark.parametrize("side", [1, 16, 40])
def test_images_far_below_the_input_size_are_refused(tiny_base_dir, side):
    processor = OpenVLAProcessor.from_pretrained(tiny_base_dir)
    with pytest.raises(ValueError, match=f"got {side}x{side} px, far below"):
        processor.image_processor(np.zeros((side, side, 3), np.uint8))


@pytest.mark.parametrize("side", [128, 256])
def test_libero_frames_are_accepted_unchanged(tiny_base_dir, side):
    processor = OpenVLAProcessor.from_pretrained(tiny_base_dir)
    frame = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    assert processor.image_processor(frame)["pixel_values"].shape[-2:] == (224, 224)


# ------------------------------------------------------------------------------------------ CLI
def test_a_numeric_value_that_does_not_parse_names_its_field():
    from stamo_vla.configs import parse_config
    from stamo_vla.training.finetune_config import FinetuneConfig

    with pytest.raises(ValueError, match=r"`batch_size`: Couldn't parse 'abc'"):
        parse_config(FinetuneConfig, ["--config", "tiny", "--batch_size", "abc"], prefix="finetune_")
    with pytest.raises(ValueError, match=r"`optim.lr`: Couldn't parse 'fast'"):
        parse_config(FinetuneConfig, ["--config", "tiny", "--optim.lr", "fast"], prefix="finetune_")


def _entry_points() -> list[list[str]]:
    from stamo_vla.cli import COMMANDS

    commands = [[sys.executable, "-m", "stamo_vla.cli", name, "--help"] for name in COMMANDS]
    scripts = sorted(
        p for d in ("recipes", "eval") for p in (ROOT / d).glob("*.py") if p.name != "__init__.py"
    )
    return [[sys.executable, "-m", "stamo_vla.cli", "--help"], *commands] + [
        [sys.executable, str(p), "--help"] for p in scripts
    ]


@pytest.mark.slow
def test_every_entry_point_answers_help():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for argv in _entry_points():
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{' '.join(argv[1:])} --help failed:\n{done.stderr[-2000:]}"
            assert "usage" in done.stdout.lower(), f"{' '.join(argv[1:])} printed no usage"


def test_truncated_weights_and_configs_name_themselves(tmp_path, tiny_base_dir, tiny_adapter_dir):
    from stamo_vla.vla.loading import CheckpointError

    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    weights = sorted(base.glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"{weights.name} is truncated"):
        OpenVLAForActionPrediction.from_pretrained(base)
    (base / "config.json").write_text('{"model_type": ')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        OpenVLAForActionPrediction.from_pretrained(base)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    lora = adapter / "adapter_model.safetensors"
    lora.write_bytes(lora.read_bytes()[:100])
    model = OpenVLAForActionPrediction.from_pretrained(tiny_base_dir)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is truncated"):
        load_adapter(model, adapter)
    (adapter / "stamo_adapter_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"stamo_adapter_config\.json is not valid JSON"):
        load_adapter(model, adapter)


@pytest.mark.slow
def test_a_truncated_tfrecord_shard_names_the_dataset_and_the_fix(tmp_path, toy_rlds_root):
    from stamo_vla.data.rlds import iter_episodes

    shutil.copytree(toy_rlds_root / "toy_video", tmp_path / "toy_video")
    record = sorted((tmp_path / "toy_video").rglob("*.tfrecord*"))[0]
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"toy_video.*{record.name}.*truncated or corrupt"):
        list(iter_episodes(tmp_path, "toy_video", load_images=False))
