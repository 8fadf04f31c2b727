"""Test-wide settings (offline, headless rendering, small thread pools, `gpu` marker handling) and the fixtures
every test folder shares."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402

import pytest  # noqa: E402

# Importing tensorflow before triton makes a later triton load (torch._dynamo, transformers) segfault with
# tensorflow-cpu 2.21 + triton 3.8; loading triton first avoids it whatever order the tests import things in.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_stamo_dir(tmp_path_factory):
    """A random-init tiny StaMo autoencoder (`stamo_vla.stamo.tiny_config`, torch seed 0) saved once per session;
    read it with ``StaMoAutoencoder.from_pretrained`` or ``StaMoEncoder.from_pretrained``, never write into it."""
    import torch

    from stamo_vla.stamo import StaMoAutoencoder, tiny_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("stamo") / "tiny_stamo"
        StaMoAutoencoder(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
