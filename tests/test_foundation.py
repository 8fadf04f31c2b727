import json
import subprocess
import sys

import pytest

from stamo_vla import cli, configs, fileio
from stamo_vla.optional import MissingDependencyError, require


def test_import_is_light():
    code = (
        "import sys, stamo_vla, stamo_vla.keys, stamo_vla.cli, stamo_vla.configs;"
        "bad = [m for m in ('tensorflow', 'libero', 'diffusers', 'torch') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_unknown_command_suggests(capsys):
    assert cli.main(["colect"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'collect'" in err


def test_cli_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_every_command_speaks_the_one_config_dialect(capsys):
    """Every subcommand parses a draccus config through parse_config (presets, "did you mean") and reports a user
    error as one line with exit code 2, without a traceback."""
    for name in cli.COMMANDS:
        assert cli.main([name, "--config", "no_such_preset"]) == 2, name
        err = capsys.readouterr().err
        assert f"stamo-vla {name}: error: config: no preset or YAML file 'no_such_preset'" in err, err
        assert "Traceback" not in err


def test_an_unknown_flag_is_a_one_line_error_with_a_suggestion(capsys):
    assert cli.main(["bench", "--only_x", "[adapter]"]) == 2
    err = capsys.readouterr().err
    assert (
        "stamo-vla bench: error: unrecognized arguments: --only_x" in err and "Did you mean '--only'?" in err
    )
    assert "Traceback" not in err


def test_no_entry_point_parses_outside_parse_config():
    from pathlib import Path

    root = Path(cli.__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for d in ("stamo_vla", "recipes", "eval")
        for p in (root / d).rglob("*.py")
        if ("import argparse" in p.read_text() or "draccus.parse(" in p.read_text())
        and p != root / "stamo_vla" / "configs.py"  # parse_config itself, the one place that parses
    ]
    assert offenders == []


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"stamo-vla\[sim\]"):
        from stamo_vla import optional

        optional.EXTRAS["definitely_not_a_module_xyz"] = "sim"
        require("definitely_not_a_module_xyz", "the simulator")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    fileio.write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_dir_replaces_and_survives_failure(tmp_path):
    target = tmp_path / "ckpt"
    with fileio.atomic_dir(target, kind="test") as d:
        (d / "w.txt").write_text("v1")
    with pytest.raises(RuntimeError), fileio.atomic_dir(target, kind="test", overwrite=True) as d:
        (d / "w.txt").write_text("v2-partial")
        raise RuntimeError("killed")
    assert (target / "w.txt").read_text() == "v1"
    with fileio.atomic_dir(target, kind="test", overwrite=True) as d:
        (d / "w.txt").write_text("v2")
    assert (target / "w.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    fileio.append_jsonl(path, {"i": 0})
    fileio.append_jsonl(path, {"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "succ')
    assert fileio.read_jsonl(path) == [{"i": 0}, {"i": 1}]


def test_unknown_preset_suggests(tmp_path):
    (tmp_path / "tiny.yaml").write_text("a: 1\n")
    with pytest.raises(ValueError, match="Did you mean 'tiny'"):
        configs.resolve_preset("tinny", directory=tmp_path)


def test_check_choice_message():
    with pytest.raises(
        ValueError, match=r"target='stat' is not valid; allowed: \['state', 'motion', 'none'\]"
    ):
        configs.check_choice("target", "stat", ["state", "motion", "none"])
