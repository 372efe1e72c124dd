"""benchmarks/gpu_suite.sh runs every step at toy size on a CPU, so it is ready where a GPU is lent."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_suite_smoke_on_cpu(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for name in ("cat", "dog"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / name / f"{i}.jpg")
    env = {**os.environ, "SMOKE": "1", "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"),
           "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(SUITE)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("machine", "bench_blocks", "bench_train", "bench_cams", "cifar10"):
        assert (tmp_path / "out" / f"{name}.txt").stat().st_size > 0
    assert "| nonlocal |" in (tmp_path / "out" / "bench_blocks.txt").read_text()
    assert "CIFAR-10 time-to-94 %:" in out.stdout and "test top-1" in out.stdout
