"""Deterministic, resumable, rank-sharded batches over an in-memory dataset.

Each epoch is a permutation drawn from ``seed + epoch``; a global batch of ``batch_size * world_size``
indices is cut from it and every rank takes its own slice. The position ``{"epoch", "batch"}`` is all a
checkpoint needs to continue with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import torch


class EpochBatches:
    """Iterate index batches (per rank) forever.

    Args:
        num_items: dataset size.
        batch_size: per-rank batch size.
        seed: shuffling seed (the same on every rank).
        rank, world_size: this process's slice of each global batch.
        state: a position from `state_dict` to resume from.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict | None = None,
    ):
        if batch_size * world_size > num_items:
            raise ValueError(
                f"batch_size={batch_size} x {world_size} processes needs at least {batch_size * world_size} "
                f"training images; the dataset has {num_items}. Lower batch_size or add data."
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = num_items // (batch_size * world_size)  # the incomplete last global batch is dropped
        state = state or {}
        self.epoch, self.batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
        self._perm = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def state_dict(self) -> dict:
        """The position of the next batch."""
        return {"epoch": self.epoch, "batch": self.batch}

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.batch >= self.per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        global_size = self.batch_size * self.world_size
        start = self.batch * global_size + self.rank * self.batch_size
        self.batch += 1
        return self._perm[start : start + self.batch_size]
