"""Data loss: no writer (merge, save_adapter, save_checkpoint, atomic_dir) ever replaces a foreign directory."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from stamo_vla import cli, fileio
from stamo_vla.training.checkpoint import TrainerState, checkpoint_dir, save_checkpoint

STATS = {"toy": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}}


def _foreign(path):
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("user data")
    return path


def _intact(path):
    return (path / "precious.txt").read_text() == "user data"


# ------------------------------------------------------------------------------------------ atomic_dir
def test_atomic_dir_refuses_a_foreign_directory_and_keeps_it(tmp_path):
    target = _foreign(tmp_path / "out")
    with (
        pytest.raises(fileio.ForeignDirectoryError, match="not a stamo_vla output"),
        fileio.atomic_dir(target, kind="adapter"),
    ):
        pass
    assert _intact(target)


def test_atomic_dir_refuses_another_kind_and_a_previous_output_without_overwrite(tmp_path):
    target = tmp_path / "out"
    with fileio.atomic_dir(target, kind="adapter") as d:
        (d / "v").write_text("1")
    with (
        pytest.raises(fileio.ForeignDirectoryError, match="adapter output"),
        fileio.atomic_dir(target, kind="merged_checkpoint", overwrite=True),
    ):
        pass
    with pytest.raises(FileExistsError, match="overwrite"), fileio.atomic_dir(target, kind="adapter"):
        pass
    with fileio.atomic_dir(target, kind="adapter", overwrite=True) as d:
        (d / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert fileio.output_kind(target) == "adapter"


def test_atomic_dir_takes_an_empty_directory_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with fileio.atomic_dir(tmp_path / "empty", kind="adapter") as d:
        (d / "v").write_text("1")
    assert (tmp_path / "empty" / "v").is_file()
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(fileio.ForeignDirectoryError, match="not a directory"),
        fileio.atomic_dir(tmp_path / "file", kind="adapter"),
    ):
        pass
    assert (tmp_path / "file").read_text() == "x"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with fileio.atomic_dir(tmp_path / "out", kind="adapter") as d:
            fileio.write_json_atomic(d / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "a.json").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------- save_adapter
def test_save_adapter_refuses_a_foreign_directory(tmp_path, tiny_base_dir):
    from stamo_vla.adapter import StaMoAdapterConfig, attach, save_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    model = attach(
        OpenVLAForActionPrediction.from_pretrained(tiny_base_dir),
        StaMoAdapterConfig(target="none", lora_rank=2),
    )
    target = _foreign(tmp_path / "run")
    with pytest.raises(fileio.ForeignDirectoryError):
        save_adapter(model, target, dataset_statistics=STATS)
    assert _intact(target) and not (target / "adapter_config.json").exists()
    save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS)
    save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS, overwrite=True)
    # the base checkpoint is an OpenVLA checkpoint, not an adapter: never replaced by one
    with pytest.raises(fileio.ForeignDirectoryError, match="openvla_checkpoint"):
        save_adapter(model, tiny_base_dir, dataset_statistics=STATS, overwrite=True)
    assert (tiny_base_dir / "config.json").is_file()


# ------------------------------------------------------------------------------------- save_checkpoint
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def save_pretrained(self, directory):
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "w.safetensors"))


def test_save_checkpoint_refuses_a_foreign_step_directory_and_cleans_stale_temporaries(tmp_path):
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    foreign = _foreign(checkpoint_dir(tmp_path, 2))
    with pytest.raises(fileio.ForeignDirectoryError):
        save_checkpoint(tmp_path, TrainerState(step=2), model, opt)
    assert _intact(foreign)
    stale = tmp_path / "checkpoints" / ".step_00000001.x1y2.tmp"  # left by a write that was killed
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"partial")
    path = save_checkpoint(tmp_path, TrainerState(step=1), model, opt)
    assert not stale.exists() and fileio.output_kind(path) == "training_checkpoint"
    save_checkpoint(tmp_path, TrainerState(step=1), model, opt)  # rewriting its own step is allowed


# ---------------------------------------------------------------------------------------------- merge
@pytest.mark.parametrize(
    "out",
    [
        lambda base, adapter: base,  # --output_dir == --vla_path
        lambda base, adapter: base / "merged",  # inside --vla_path
        lambda base, adapter: adapter,  # --output_dir == --adapter_dir
        lambda base, adapter: adapter / "merged",  # inside --adapter_dir
        lambda base, adapter: base.parent,  # contains both
    ],
    ids=["equals-base", "inside-base", "equals-adapter", "inside-adapter", "contains-both"],
)
def test_merge_refuses_an_out_overlapping_its_inputs(tmp_path, out, capsys):
    base, adapter = _foreign(tmp_path / "runs" / "base"), _foreign(tmp_path / "runs" / "adapter")
    merge = ["merge", "--vla_path", str(base), "--adapter_dir", str(adapter)]
    assert cli.main([*merge, "--output_dir", str(out(base, adapter))]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert _intact(base) and _intact(adapter)


def test_merge_refuses_a_foreign_out_and_needs_overwrite_for_its_own(
    tmp_path, tiny_base_dir, tiny_adapter_dir, capsys
):
    run = _foreign(tmp_path / "runs" / "toy")  # a run directory: checkpoints, metrics, ...
    args = ["merge", "--vla_path", str(tiny_base_dir), "--adapter_dir", str(tiny_adapter_dir), "--output_dir"]
    assert cli.main([*args, str(run), "--overwrite", "true"]) == 2
    assert "not a stamo_vla output" in capsys.readouterr().err and _intact(run)
    out = tmp_path / "merged"
    assert cli.main([*args, str(out)]) == 0
    assert fileio.output_kind(out) == "merged_checkpoint"
    assert cli.main([*args, str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, str(out), "--overwrite", "true"]) == 0


def test_merge_overwrite_refuses_files_it_did_not_write(tmp_path, tiny_base_dir, tiny_adapter_dir, capsys):
    args = ["merge", "--vla_path", str(tiny_base_dir), "--adapter_dir", str(tiny_adapter_dir), "--output_dir"]
    out = tmp_path / "merged"
    assert cli.main([*args, str(out), "--max_shard_size", "200KB"]) == 0
    listed = set(json.loads((out / fileio.OUTPUT_MARKER).read_text())["files"])
    assert {p.name for p in out.iterdir()} - {fileio.OUTPUT_MARKER} == listed
    (out / "notes.txt").write_text("user data")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    assert cli.main([*args, str(out), "--overwrite", "true"]) == 2
    err = capsys.readouterr().err
    assert "eval/results.json, notes.txt" in err and "Move them out" in err
    assert (out / "notes.txt").read_text() == "user data" and (out / "eval" / "results.json").is_file()
    assert listed <= {p.name for p in out.iterdir()}  # the earlier merge is untouched too
    (out / "notes.txt").unlink()
    (out / "eval" / "results.json").unlink()
    (out / "eval").rmdir()
    assert cli.main([*args, str(out), "--overwrite", "true"]) == 0  # only what it wrote: replaced
    assert (out / fileio.WEIGHTS_FILE).is_file() and not (out / fileio.WEIGHTS_INDEX).exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_weights_follow_the_umask(tmp_path, tiny_base_dir, umask):
    from safetensors.torch import save_file

    from stamo_vla.adapter import StaMoAdapterConfig, attach, save_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    model = attach(OpenVLAForActionPrediction.from_pretrained(tiny_base_dir), StaMoAdapterConfig(lora_rank=2))
    old = os.umask(umask)
    try:
        fileio.save_weights({"w": torch.ones(2)}, tmp_path / "w.safetensors")
        with fileio.atomic_dir(tmp_path / "third_party", kind="adapter") as d:
            save_file({"w": torch.ones(2)}, str(d / "w.safetensors"))  # what save_pretrained does: 0600
        save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS)
        save_checkpoint(
            tmp_path / "run", TrainerState(step=1), _Tiny(), torch.optim.SGD(_Tiny().parameters())
        )
    finally:
        os.umask(old)
    files = [
        tmp_path / "w.safetensors",
        tmp_path / "third_party" / "w.safetensors",
        tmp_path / "adapter" / "adapter_model.safetensors",
        tmp_path / "adapter" / "stamo_head.safetensors",
        checkpoint_dir(tmp_path / "run", 1) / "model" / "w.safetensors",
    ]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
        f.name: oct(0o666 & ~umask) for f in files
    }


# ------------------------------------------------------------------------- every command: inputs apart
def _tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("link", [False, True], ids=["same path", "symlink"])
def test_finetune_refuses_a_run_dir_that_is_its_base_checkpoint(
    tmp_path, tiny_base_dir, finetune_argv, link, capsys
):
    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, base)
    before = _tree(base)
    run_dir = base
    if link:
        run_dir = tmp_path / "link"
        run_dir.symlink_to(base)
    args = finetune_argv("--vla_path", str(base), "--max_steps", "1")
    assert cli.main(["finetune", *args, "--run_dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--run_dir {run_dir} is --vla_path {base}" in err and "would destroy the input" in err
    assert _tree(base) == before  # dataset_statistics.json included


def test_every_writing_command_refuses_an_output_overlapping_its_inputs(tmp_path, toy_rlds_root, capsys):
    stamo = _foreign(tmp_path / "stamo")
    (stamo / "model").mkdir()
    data = str(toy_rlds_root)
    dataset = toy_rlds_root / "toy_push_no_noops" / "1.0.0"
    toy = ["--data_root_dir", data, "--dataset_name", "toy_push_no_noops"]
    commands = {
        "eval": ["--policy.checkpoint", str(stamo / "model"), "--output_dir", str(stamo / "model")],
        "cache-targets": [*toy, "--stamo_path", str(stamo), "--output_dir", str(stamo)],
        "label-latent-actions": [*toy, "--stamo_path", str(stamo), "--output_dir", str(dataset / "labels")],
        "probe": [*toy, "--stamo_path", str(stamo), "--output_dir", str(stamo / "probe")],
        "train-action-decoder": [*toy, "--stamo_path", str(stamo), "--output_dir", str(dataset)],
        "convert": ["--to", "lerobot", *toy, "--output_dir", str(toy_rlds_root)],
        "train-base": [
            "--data.data_root_dir",
            data,
            "--data.dataset_names",
            "[toy_push_no_noops]",
            "--data.image_size",
            "112",
        ]
        + ["--run_dir", str(toy_rlds_root)],
        "pretrain": [
            "--source.type",
            "image_folder",
            "--source.path",
            str(stamo),
            "--run_dir",
            str(tmp_path),
        ],
    }
    for command, args in commands.items():
        assert cli.main([command, *args]) == 2, command
        err = capsys.readouterr().err
        assert "would destroy the input" in err, (command, err)
    assert _intact(stamo) and sorted(os.listdir(stamo)) == ["model", "precious.txt"]


def test_convert_never_writes_into_the_lerobot_dataset_it_reads(tmp_path, capsys):
    source = Path(__file__).parents[1] / "data" / "fixtures" / "lerobot_libero_image"
    root = tmp_path / "lerobot"
    shutil.copytree(source, root)
    before = _tree(root)
    args = ["convert", "--to", "rlds", "--data_root_dir", str(root), "--dataset_name", "any"]
    assert cli.main([*args, "--output_dir", str(root), "--output_name", "back"]) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {root / 'back'} sits inside --data_root_dir (any) {root}" in err
    assert _tree(root) == before
