"""Two real ranks (gloo barrier) shard one evaluation and rank 0 merges it: equal to a one-process run."""

import json
import os
import socket

import pytest
import torch.multiprocessing as mp
from test_eval_harness import CATALOG, FakePolicy, FakePool, _cfg, _outcomes, _run, _strip_times

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, cfg):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from stamo_vla.libero.evaluation import evaluate

    pool = FakePool(cfg.num_workers)
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=FakePolicy(), catalog=CATALOG)
    assert (summary is None) == (rank != 0)


def test_two_ranks_with_a_real_barrier(tmp_path):
    cfg = _cfg(tmp_path, name="ranks")
    mp.spawn(_rank_main, args=(2, _free_port(), cfg), nprocs=2, join=True)
    files = sorted(p.name for p in (tmp_path / "ranks" / "results").iterdir())
    assert files == ["rank0.jsonl", "rank1.jsonl"]
    merged = json.loads((tmp_path / "ranks" / "summary.json").read_text())

    reference, _ = _run(_cfg(tmp_path, name="single"))
    assert _strip_times(merged) == _strip_times(reference)
    assert _outcomes(tmp_path / "ranks") == _outcomes(tmp_path / "single")
