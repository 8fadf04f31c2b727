"""The data tests' small RLDS datasets, written once per session with our writer (episodes: `data_helpers`)."""

from __future__ import annotations

import pytest
from data_helpers import ACTION_FREE, LABELED, NUM_EPISODES, make_episode


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data_root_dir with a 20-episode labeled dataset and a 3-episode action-free dataset."""
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("rlds")
    write_rlds_dataset((make_episode(i) for i in range(NUM_EPISODES)), root, LABELED)
    write_rlds_dataset(
        (make_episode(100 + i, action_free=True, tag="video") for i in range(3)), root, ACTION_FREE
    )
    return root
