import pytest
import torch

from stamo_vla.training.batches import EpochBatches


def test_resume_from_state_continues_the_same_sequence():
    full = EpochBatches(10, 3, seed=5)
    seq = [next(full).tolist() for _ in range(7)]  # crosses epoch boundaries (3 batches per epoch)
    part = EpochBatches(10, 3, seed=5)
    for _ in range(4):
        next(part)
    resumed = EpochBatches(10, 3, seed=5, state=part.state_dict())
    assert [next(resumed).tolist() for _ in range(3)] == seq[4:]


def test_each_epoch_is_a_permutation_and_ranks_are_disjoint():
    ranks = [EpochBatches(12, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    epoch = [torch.cat([next(r) for _ in range(2)]) for r in ranks]  # 2 global batches per epoch
    joined = torch.cat(epoch)
    assert sorted(joined.tolist()) == list(range(12))


def test_too_small_dataset_is_reported():
    with pytest.raises(ValueError, match="needs at least 8 training images; the dataset has 5"):
        EpochBatches(5, 4, seed=0, world_size=2)


def test_a_resumed_batch_size_continues_at_the_first_sample_not_seen():
    full = EpochBatches(12, 2, seed=3)
    seen = torch.cat([next(full) for _ in range(3)])  # 6 samples in batches of 2
    rest = torch.cat([next(full) for _ in range(3)])  # the epoch's other 6
    resumed = EpochBatches(12, 3, seed=3, state={"epoch": 0, "batch": 3, "batch_size": 2})
    assert resumed.state_dict() == {"epoch": 0, "batch": 2, "batch_size": 3}
    assert torch.cat([next(resumed) for _ in range(2)]).tolist() == rest.tolist()
    assert set(seen.tolist()).isdisjoint(rest.tolist())
