import multiprocessing as mp

import pytest

from visattn.bench.blocks import cases, run_block_benchmark
from visattn.system.allocator import _glibc, reuse_large_allocations

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt tuning applies to glibc only")


def _rss_kept_after_free(reuse: bool, queue: mp.Queue) -> None:
    import torch

    from visattn.bench.timing import proc_status_kib

    if reuse:
        assert reuse_large_allocations()
    block = torch.ones(48 * 2**20 // 4)  # 48 MiB, written so that every page is resident
    held = proc_status_kib("VmRSS")
    del block
    queue.put(held - proc_status_kib("VmRSS"))  # KiB given back to the kernel by the free


@needs_glibc
@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_keeps_a_freed_large_block_resident(reuse):
    ctx = mp.get_context("spawn")  # mallopt changes the whole process: never this one
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_kept_after_free, args=(reuse, queue))
    proc.start()
    released_kib = queue.get(timeout=120)
    proc.join()
    if reuse:
        assert released_kib < 8 * 1024  # kept in malloc's heap for the next block
    else:
        assert released_kib > 40 * 1024  # glibc unmaps a block this large on free


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, True, "1G"])
def test_reuse_rejects_bad_limits(bad):
    with pytest.raises(ValueError, match="limit_bytes must be a positive int"):
        reuse_large_allocations(bad)


def test_train_step_is_timed_under_both_allocators():
    steps = [c for c in cases() if c.train_step]
    assert [c.reuse_allocations for c in steps] == [False, True]
    assert len({(c.name, c.shape, c.time_target) for c in steps}) == 1  # the same comparison twice


@needs_glibc
@pytest.mark.slow
def test_quick_train_step_rows_say_which_allocator():
    lines = []
    rows = run_block_benchmark(quick=True, only=["resnet18+cbam"], printer=lines.append)
    assert [r["block"] for r in rows] == ["resnet18+cbam"] * 2
    assert rows[0]["note"].startswith("default malloc") and "ours_mb" in rows[0]
    assert rows[1]["note"].startswith("malloc reuses large blocks") and "ours_mb" not in rows[1]
    assert all(r["ours_ms"] > 0 and r["ref_ms"] > 0 for r in rows)


@needs_glibc
@pytest.mark.slow
def test_bench_train_cli_reports_the_malloc_regime():
    import subprocess
    import sys

    # A subprocess: the flag retunes malloc for the whole process it runs in.
    result = subprocess.run([sys.executable, "-m", "visattn", "bench", "train", "--batch-size", "2", "--steps", "1",
                             "--reuse-allocations"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "malloc reuses large blocks" in result.stdout and "| resnet18_cbam |" in result.stdout
