"""The CIFAR-10 tables people read (README, docs/results.md) show what results/cifar10_cpu/summary.json holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = json.loads((ROOT / "results" / "cifar10_cpu" / "summary.json").read_text())
README_NAMES = {"none (baseline)": "baseline", "SE": "se", "CAM": "cam", "spatial": "spatial", "CBAM": "cbam",
                "non-local (stages 2-4)": "nonlocal"}
_NUMBER = re.compile(r"[+-]?\d+\.\d+")


def _rows(page: Path, header: str) -> dict[str, list[str]]:
    """The cells of the table under the header line that starts with ``header``, by first cell."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _figures(variant: str) -> tuple[str, str | None, str | None]:
    """Mean and std of test top-1 and the mean difference to the baseline, as the tables print them."""
    v = SUMMARY["variants"][variant]
    std = f"{100 * v['test_acc_std']:.2f}" if v["runs"] > 1 else None
    versus = f"{100 * v['vs_baseline']['mean']:+.2f}" if "vs_baseline" in v else None
    return f"{100 * v['test_acc_mean']:.2f}", std, versus


def test_readme_table_matches_the_summary():
    readme = ROOT / "README.md"
    rows = _rows(readme, "| block | test top-1 %")
    assert {README_NAMES[name] for name in rows} == set(SUMMARY["variants"])
    # The text above the table names the seeds once for every row.
    assert all(v["seeds"] == [0, 1, 2] for v in SUMMARY["variants"].values())
    assert "mean +- std over seeds 0, 1 and 2" in " ".join(readme.read_text().split())
    for name, cells in rows.items():
        mean, std, versus = _figures(README_NAMES[name])
        assert _NUMBER.findall(cells[0]) == [mean, std], (name, cells[0])
        assert (_NUMBER.findall(cells[1]) or [None])[0] == versus, (name, cells[1])


def test_results_page_table_matches_the_summary():
    rows = _rows(ROOT / "docs" / "results.md", "| block | seeds |")
    assert set(rows) == set(SUMMARY["variants"])
    for variant, cells in rows.items():
        mean, std, versus = _figures(variant)
        assert int(cells[0]) == SUMMARY["variants"][variant]["runs"]
        numbers = _NUMBER.findall(cells[1])
        assert numbers[0] == mean and (std is None or numbers[1] == std), (variant, cells[1])
        assert (_NUMBER.findall(cells[2]) or [None])[0] == versus, (variant, cells[2])
        assert cells[3] == f"{SUMMARY['variants'][variant]['params'] / 1e6:.2f}M"
