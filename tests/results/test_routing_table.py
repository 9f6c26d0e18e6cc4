"""How a routing table reads: labels of any script line up, shares and scores in columns."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.results.run import display_width, pad


def columns(line: str) -> int:
    """Where the share starts on a table line, in terminal columns (an independent count:
    East Asian wide and full-width characters take two)."""
    label = line.split(":")[0] + ":"
    rest = line[len(label):]
    start = label + rest[:len(rest) - len(rest.lstrip())]
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in start)


@pytest.mark.parametrize("labels", [["我", "喜欢", "喝茶", "tea"], ["猫", "cat", "ねこ", "고양이"],
                                    ["the", "cat", "sat", "mat"]])
def test_shares_start_in_one_column_whatever_the_script(labels):
    n = len(labels)
    q, k, v = np.random.default_rng(2).normal(size=(3, n, 4))
    run = rs.simulate(q, k, v, graph=rs.graphs.complete(n, labels=labels))
    lines = str(run.routing_table(n - 1)).splitlines()[1:1 + n]
    assert len({columns(line) for line in lines}) == 1, lines
    # The column is one past the widest label's colon.
    widest = max(sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in label)
                 for label in labels)
    assert columns(lines[0]) == len("  token ") + widest + 2


def test_display_width_and_pad():
    assert [display_width(text) for text in ("", "tea", "喝茶", "ＡＢ", "é", "e\u0301")] == \
        [0, 3, 4, 4, 1, 1]
    assert pad("喝茶", 6) == "喝茶  " and pad("tea", 6) == "tea   "
    assert pad("喝茶喝茶", 6) == "喝茶喝茶"             # never cut: wider text stays whole
