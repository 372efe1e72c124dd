"""ruff (with the annotation rules in pyproject.toml) guards style and full type hints on the public code."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff missing: pip install -e '.[dev]'")
def test_ruff_clean():
    command = [sys.executable, "-m", "ruff", "check", "visattn", "tests"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
