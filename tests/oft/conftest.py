"""Fixtures of the OFT-variant tests: a toy RLDS dataset with wrist camera + proprio (the tiny StaMo checkpoint is
tests/conftest.py's `tiny_stamo_dir`)."""

from __future__ import annotations

import pytest
from oft_helpers import OFT_DATASET, toy_episode


@pytest.fixture(scope="session")
def oft_data_root(tmp_path_factory):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("oft_data")
    write_rlds_dataset((toy_episode(i) for i in range(6)), root, OFT_DATASET)
    return root
