"""Every Python code block in the README and the docs runs as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def code_blocks():
    for page in PAGES:
        for number, block in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            yield pytest.param(block, id=f"{page.relative_to(ROOT)}#{number}")


@pytest.mark.parametrize("block", list(code_blocks()))
def test_code_block_runs(block, capsys):
    uses_hf = any(word in block for word in ("import torch", "routing_sim.hf", "rs.hf"))
    missing = [m for m in ("torch", "transformers")
               if uses_hf and importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"this example needs {', '.join(missing)} (the hf extra)")
    exec(compile(block, "<doc>", "exec"), {})
    assert capsys.readouterr().out.strip(), "a doc example should show something"


def test_every_chinese_page_has_an_english_one_and_back():
    english = {p.name for p in (ROOT / "docs" / "en").glob("*.md")} | {"pytorch.md",
                                                                          "numerics.md"}
    chinese = {p.name for p in (ROOT / "docs" / "zh").glob("*.md")}
    assert english == chinese and len(chinese) >= 8


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)
