import pytest

from visattn.bench.blocks import cases, run_block_benchmark, sdpa_backend


def test_sdpa_backend_is_fused_on_cpu():
    assert "flash" in sdpa_backend("cpu")


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_every_row():
    lines = []
    rows = run_block_benchmark(quick=True, markdown=True, only=["se", "nonlocal"], printer=lines.append)
    assert [r["block"] for r in rows] == ["se", "nonlocal"]
    assert all(r["ours_ms"] > 0 and r["ref_ms"] > 0 and r["ours_mb"] >= 0 for r in rows)
    assert lines[1].startswith("| block |") and "timm NonLocalAttn" in lines[-1]


def test_every_registered_builtin_has_a_row():
    names = {c.name for c in cases()}
    assert {"se", "cam", "spatial", "cbam", "nonlocal", "resnet18+cbam"} == names


def test_cuda_request_without_cuda_is_clear(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_block_benchmark(device="cuda")


def test_train_benchmark_small_run():
    from visattn.bench.train import run_train_benchmark

    lines = []
    rows = run_train_benchmark(batch_size=2, steps=1, warmup=0, blocks=["se"], printer=lines.append)
    assert [r["model"] for r in rows] == ["resnet18", "resnet18_se"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["img_s"] > 0
    assert lines[1].startswith("| model |")
    with pytest.raises(ValueError, match="amp must be"):
        run_train_benchmark(amp="fp8")


@pytest.mark.parametrize("ratio, shown", [(1.0951, "1.10x (<= 1.1x PASS)"), (1.1049, "1.105x (<= 1.1x MISS)"),
                                          (1.1003, "1.1003x (<= 1.1x MISS)"),
                                          (1.2, "1.20x (<= 1.1x MISS)"), (0.5, "0.50x")])
def test_ratio_format_never_shows_a_miss_as_the_target(ratio, shown):
    from visattn.bench.blocks import _fmt_ratio

    assert _fmt_ratio(ratio, None if shown == "0.50x" else 1.1) == shown


def _exits_without_result(queue) -> None:
    pass


def _hangs(queue) -> None:
    import time

    time.sleep(120)


def test_subprocess_without_a_result_is_a_clear_error():
    from visattn.bench.blocks import _in_subprocess

    with pytest.raises(RuntimeError, match="_exits_without_result exited with code 0 before reporting a result"):
        _in_subprocess(_exits_without_result)


def test_subprocess_past_its_deadline_is_ended():
    import time

    from visattn.bench.blocks import _in_subprocess

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="_hangs gave no result within 3 s"):
        _in_subprocess(_hangs, timeout_s=3)
    assert time.monotonic() - start < 60  # terminated, not waited out


def _ignores_sigterm(queue) -> None:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)


@pytest.mark.slow
def test_subprocess_that_ignores_sigterm_is_killed():
    import time

    from visattn.bench.blocks import _in_subprocess

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="gave no result within 8 s"):
        _in_subprocess(_ignores_sigterm, timeout_s=8)  # time enough for the child to start ignoring SIGTERM
    assert 15 < time.monotonic() - start < 60  # SIGTERM ignored for the 10 s grace period, then killed
