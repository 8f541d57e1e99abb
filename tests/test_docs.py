"""The documentation cannot drift from the code: every Python block of the guided reading (docs/reading.md) and of
the README runs, each page's blocks in order in one namespace, from the repository's root."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/reading.md", "README.md"]


def python_blocks(page):
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, monkeypatch):
    blocks = python_blocks(page)
    assert blocks or page == "README.md"  # the guided reading has code to run
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page}, Python block {i + 1}", "exec"), namespace)


def test_every_link_between_pages_exists():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+?)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"
