"""Fixtures of the OFT-variant tests: a toy RLDS dataset with wrist camera + proprio, and a tiny StaMo checkpoint."""

from __future__ import annotations

import pytest
from oft_helpers import OFT_DATASET, toy_episode


@pytest.fixture(scope="session")
def oft_data_root(tmp_path_factory):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("oft_data")
    write_rlds_dataset((toy_episode(i) for i in range(6)), root, OFT_DATASET)
    return root


@pytest.fixture(scope="session")
def oft_stamo_dir(tmp_path_factory):
    import torch

    from stamo_vla.stamo import StaMoAutoencoder, tiny_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("oft_stamo") / "tiny_stamo"
    StaMoAutoencoder(tiny_config()).save_pretrained(path)
    return path
