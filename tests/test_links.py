"""Every repository-relative link in README.md and docs/ (both languages) resolves.

A link ``[text](path)`` or ``![alt](path)`` must name a file of the repository, relative
to the page; ``path#anchor`` and ``#anchor`` must also name a heading of that page, by
GitHub's rule (lower case, punctuation removed, spaces to hyphens, ``-1``, ``-2`` for
repeats). Links to other sites are not followed (the suite runs offline).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code (links there are not links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or heading is None:
            continue
        text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "",
                      heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def test_the_pages_have_links():
    assert len(PAGES) > 20
    assert sum(len(links(page)) for page in PAGES) > 50


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or root not in (resolved, *resolved.parents):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Two words\n\n## Two words\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#two-words-1) [b](missing.md) [c](other.md#nothing)\n"
                    "[d](#here) [e](https://example.com/x) `[f](nowhere.md)`\n# Here\n",
                    encoding="utf-8")
    assert broken_links(page, tmp_path.resolve()) == [
        "missing.md: no such file", "other.md#nothing: no heading #nothing in other.md"]


def test_anchors_follow_github():
    page = ROOT / "docs" / "en" / "api.md"
    assert "memory-budget" in anchors(page)
    assert "内存预算" in anchors(ROOT / "docs" / "zh" / "api.md")
