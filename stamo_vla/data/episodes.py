"""Episode identity: one key per episode that is unique in every layout, and the check that it is.

``episode_metadata/file_path`` names an episode in the datasets our writer makes, but not in upstream's: the
LIBERO builder (openvla/rlds_dataset_builder) stores the HDF5 file of a whole task there, so about 50
demonstrations share it, and the demo index it keys examples by is not stored. What every layout stores for
each episode is its numbers, so the identity is the file path plus a digest of the episode's content (length,
instruction, states, joint states, actions): two demonstrations of one task start from different initial states,
so their states differ. The digest needs no images, so readers that skip them (statistics) compute it too.

    episode_id(ep) == "libero_spatial/pick_bowl_demo.hdf5#3f2a9c0d41b7e6a5"

A dataset in which two episodes still share an identity holds the same episode twice (same path, same numbers):
`EpisodeIdentities` refuses it, since the targets of one could not be told from the other's.
"""

from __future__ import annotations

import hashlib

import numpy as np

# the per-step arrays an episode is identified by (present in every layout we read; images are not needed)
CONTENT_FIELDS = ("state", "joint_state", "action")


def episode_id(episode: dict) -> str:
    """``<file_path>#<16 hex digits>``: the file path plus a digest of the episode's content.

    Args:
        episode: an episode as `stamo_vla.data.rlds.iter_episodes` yields it (``file_path``,
            ``language_instruction`` and the arrays of `CONTENT_FIELDS`; images are not read).
    """
    h = hashlib.sha1()
    h.update(str(episode.get("language_instruction", "")).encode())
    for name in CONTENT_FIELDS:
        if name in episode:
            values = np.ascontiguousarray(episode[name], dtype=np.float32)
            h.update(f"|{name}{values.shape}".encode())
            h.update(values.tobytes())
    return f"{episode['file_path']}#{h.hexdigest()[:16]}"


def episode_key(identity: str) -> str:
    """File-name-safe key of an episode identity (the identity holds the file path, which may contain slashes)."""
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


class EpisodeIdentities:
    """The identities seen so far in one pass over a dataset; `add` refuses one that repeats.

    Args:
        dataset: what is read (named in the error), e.g. ``"dataset 'libero_spatial_no_noops'"``.
    """

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self._index: dict[str, int] = {}

    def add(self, episode: dict) -> str:
        """The identity of the next episode of the pass; raises ValueError when an earlier one had it."""
        identity = episode_id(episode)
        index = len(self._index)
        if identity in self._index:
            raise ValueError(
                f"{self.dataset}: episodes {self._index[identity]} and {index} are the same episode "
                f"({identity}: same file_path, instruction, states and actions), so their targets cannot be told "
                "apart. Remove the duplicate from the dataset (rebuild it from its source) and run again."
            )
        self._index[identity] = index
        return identity
