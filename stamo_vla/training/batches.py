"""The resumable micro-batch streams the training loop draws from (`stamo_vla.training.loop`).

A stream yields micro-batches (``next(stream)``) and tells its position (``stream.state_dict()``), which a
checkpoint stores as its ``data_state``; every position records the batch size it counts in, so a run resumed
with another ``batch_size`` continues at the first sample not yet seen (`resumed_position`), the same way in
every recipe.

- `EpochBatches`: index batches over an in-memory dataset (StaMo pretraining). Each epoch is a permutation drawn
  from ``seed + epoch``; a global batch of ``batch_size * world_size`` indices is cut from it and every rank
  takes its own slice. The position ``{"epoch", "batch", "batch_size"}`` is all a checkpoint needs to continue
  with exactly the batches an uninterrupted run would have seen.
- `LoaderBatches`: the batches of a DataLoader over a sample stream that can skip ahead (fine-tuning, base
  training); its position is ``{"micro_batches", "batch_size"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def resumed_position(consumed: int, saved_batch_size: int | None, batch_size: int) -> int:
    """Batches of `batch_size` already consumed, from `consumed` batches of `saved_batch_size` (None: unchanged).

    When the batch size changed and the consumed samples are not a whole number of new batches, the stream
    resumes at the next whole batch, and a warning names the sample it resumes at.

    Args:
        consumed: batches consumed, of `saved_batch_size` samples each.
        saved_batch_size: the batch size the checkpoint recorded (None: an old checkpoint, taken as
            unchanged).
        batch_size: the current batch size.
    """
    saved = batch_size if saved_batch_size is None else int(saved_batch_size)
    if saved == batch_size:
        return consumed
    samples = consumed * saved
    if samples % batch_size:
        logger.warning(
            "batch_size changed from %d to %d: %d samples were consumed, so the data stream resumes at sample %d",
            saved,
            batch_size,
            samples,
            -(-samples // batch_size) * batch_size,
        )
    return -(-samples // batch_size)


class EpochBatches:
    """Iterate index batches (per rank) forever.

    Args:
        num_items: dataset size.
        batch_size: per-rank batch size.
        seed: shuffling seed (the same on every rank).
        rank, world_size: this process's slice of each global batch.
        state: a position from `state_dict` to resume from (one counted in another batch size is converted).
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
        self.epoch = int(state.get("epoch", 0))
        self.batch = resumed_position(int(state.get("batch", 0)), state.get("batch_size"), batch_size)
        self._perm = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def state_dict(self) -> dict:
        """The position of the next batch."""
        return {"epoch": self.epoch, "batch": self.batch, "batch_size": self.batch_size}

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


class LoaderBatches:
    """The batches of a DataLoader over a dataset that can start at a given batch (``set_resume_position``).

    Args:
        dataset: the loader's dataset; resumed at `data_state` (converted to `batch_size`).
        loader: the DataLoader (it yields batches of `batch_size`).
        batch_size: samples per batch.
        data_state: a position from `state_dict` (``{}``: the start).
        source: what the data is, for the error raised when it runs out (e.g. the split and datasets).
    """

    def __init__(self, dataset, loader, batch_size: int, data_state: dict, source: str):
        self.batch_size, self.source = batch_size, source
        saved = int(data_state.get("micro_batches", 0))
        self.consumed = resumed_position(saved, data_state.get("batch_size"), batch_size)
        if (
            self.consumed
        ):  # continue the deterministic sample stream where the run stopped, decoding nothing skipped
            dataset.set_resume_position(self.consumed, batch_size)
        self._batches = self._draw(loader)

    def _draw(self, loader) -> Iterator:
        """The loader's batches; a clear error instead of a bare StopIteration when the data runs out."""
        produced = 0
        for batch in loader:
            produced += 1
            yield batch
        if produced == 0:
            raise ValueError(
                f"no training samples: {self.source} has no episodes (or none long enough). Check data.split / "
                "data.train_percent and that the dataset holds episodes."
            )
        raise ValueError(
            f"the data ran out after {produced} batches ({self.source}); set data.repeat=true or lower max_steps."
        )

    def __iter__(self) -> LoaderBatches:
        return self

    def __next__(self):
        batch = next(self._batches)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        """The position of the next batch."""
        return {"micro_batches": self.consumed, "batch_size": self.batch_size}
