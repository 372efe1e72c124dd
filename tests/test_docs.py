"""Every relative link and image in the README and docs/ points at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "weights").glob("*.md")),
         *sorted((ROOT / "results").glob("*/README.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    targets = [t.split("#")[0] for t in _LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if t and not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
