"""format_time: every simulated time prints short and keeps its leading digits."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs
from routing_sim.views.time_format import format_time

FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(FINITE)
def test_any_float64_prints_short_with_three_significant_digits(time):
    text = format_time(time)
    assert len(text) <= 12, text
    # Read back exactly (1.798e+308 is past float64's largest, not infinite, as text).
    back, exact = Decimal(text), Decimal(time)
    assert back.is_signed() == exact.is_signed()
    # At least three significant digits: off by at most half a unit in the third digit.
    assert abs(back - exact) <= Decimal("5e-3") * abs(exact), (time, text)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.1, max_value=999_999.999, exclude_max=True))
def test_ordinary_times_keep_three_decimals(time):
    assert format_time(time) == f"{time:.3f}"


def test_edges_of_the_range():
    assert [format_time(t) for t in (0.0, -0.0, 5e-324, np.finfo(np.float64).max,
                                     float("nan"), 1e-4, 0.05)] == \
        ["0.000", "-0.000", "4.941e-324", "1.798e+308", "nan", "0.000100", "0.0500"]


def test_run_reports_print_huge_and_tiny_times_readably():
    x = np.eye(3)
    for latency, shown in ((1e-9, "t=4e-09"), (1e200, "t=4e+200")):
        run = rs.simulate(x, x, x, network=rs.Network(latency=latency))
        reports = [repr(run), str(run.stats), str(run.routing_table(0)),
                   run.trace.to_mermaid()]
        for report in reports:
            assert shown in report or "t=1e" in report, report
            assert max(map(len, report.split())) < 40, report
