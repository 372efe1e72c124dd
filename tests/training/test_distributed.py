"""Ranks skip and stop together: one rank's NaN loss, empty batch or corrupt image must not hang the others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from visattn.config import OptimConfig
from visattn.training.distributed import DistInfo
from visattn.training.loop import Schedule, TrainingDiverged, evaluate, train_one_epoch


def _batches(rank: int, case: str) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    good = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 0)
    empty = (torch.empty(0, 3), torch.empty(0, dtype=torch.long), 2)
    nan = (torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1]), 0)
    if case == "empty":  # rank 1's second batch was all unreadable: both ranks skip it
        return [good, empty if rank == 1 else good, good]
    if case == "nan":  # rank 0 diverges at the second step: both ranks stop there
        return [good, nan if rank == 0 else good, good]
    return [good, (good[0], good[1], 1) if rank == 1 else good, good]  # "corrupt" with on_corrupt='fail'


def _run_two_ranks(worker: object, tmp_path: Path, case: str) -> dict[int, str]:
    """Run ``worker(rank, store, case, results)`` on 2 gloo ranks; a rank still alive after 2 minutes has hung."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    results = mp.Manager().dict()
    context = mp.spawn(worker, args=(str(tmp_path / "store"), case, results), nprocs=2, join=False)
    for process in context.processes:
        process.join(timeout=120)
    hung = [p.pid for p in context.processes if p.is_alive()]
    for p in context.processes:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} hung: they did not take the same decision"
    return dict(results)


def _worker(rank: int, store: str, case: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        schedule = Schedule(total_steps=3, warmup_steps=0, optim=OptimConfig())
        try:
            _, step = train_one_epoch(model, _batches(rank, case), optimizer, epoch=0, step=0, schedule=schedule,
                                      device=torch.device("cpu"), info=DistInfo(rank=rank, world_size=2),
                                      progress=False, on_corrupt="fail" if case == "corrupt" else "skip")
            results[rank] = f"steps={step}"
        except (TrainingDiverged, RuntimeError) as err:
            results[rank] = type(err).__name__
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("case", "expected"), [
    ("empty", "steps=2"), ("nan", "TrainingDiverged"), ("corrupt", "RuntimeError")])
def test_ranks_agree(tmp_path: Path, case: str, expected: str) -> None:
    assert _run_two_ranks(_worker, tmp_path, case) == {0: expected, 1: expected}


def _eval_worker(rank: int, store: str, policy: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        good = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 0)
        # Uneven shards, as the evaluation sampler gives them: rank 0 has three batches, rank 1 two (one corrupt).
        batches = [good, good, good] if rank == 0 else [good, (good[0], good[1], 1)]
        try:
            stats = evaluate(model, batches, device=torch.device("cpu"), info=DistInfo(rank=rank, world_size=2),
                             progress=False, on_corrupt=policy)
            results[rank] = f"images={stats.images} skipped={stats.skipped}"
        except RuntimeError as err:
            results[rank] = type(err).__name__
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "expected"), [("skip", "images=20 skipped=1"), ("fail", "RuntimeError")])
def test_evaluation_with_uneven_shards(tmp_path: Path, policy: str, expected: str) -> None:
    assert _run_two_ranks(_eval_worker, tmp_path, policy) == {0: expected, 1: expected}
