"""The guide's links lead somewhere: every relative link and image in the README, docs/ and eval/RESULTS.md names
a file or folder that exists, read from the page's own folder as a Markdown viewer reads it."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "eval" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")   # [text](target) and ![alt](target); the #anchor is dropped


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]   # http:, https:, mailto:


def test_the_link_finder_reads_markdown_links():
    text = "see [RESULTS](../eval/RESULTS.md#k-means), ![curve](fig.png), [site](https://x.org/a) and `a](b`"
    assert relative_links(text) == ["../eval/RESULTS.md", "fig.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = relative_links(page.read_text())
    broken = [t for t in links if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_the_pages_have_links_to_check():
    assert sum(len(relative_links(p.read_text())) for p in PAGES) > 20
