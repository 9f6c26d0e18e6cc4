"""The report of a check: a line per feature, then every failure with its minimal case,
where it diverges, and the Python that reproduces it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .cases import Case
from .diagnose import Divergence

__all__ = ["Failure", "FeatureResult", "Report"]


@dataclass
class FeatureResult:
    """One feature's cases: how many ran, how many failed, and the worst error in ULPs
    of the output dtype (of the log-sum-exp for ``lse``, of the gradients for
    ``backward``) and as a fraction of the tolerance."""

    cases: int = 0
    failed: int = 0
    worst_ulps: float = 0.0
    worst_ratio: float = 0.0

    def add(self, passed: bool, ulps: float, ratio: float) -> None:
        self.cases += 1
        self.failed += not passed
        self.worst_ulps = max(self.worst_ulps, ulps)
        self.worst_ratio = max(self.worst_ratio, ratio)


@dataclass(frozen=True)
class Failure:
    """A failing case, shrunk: what failed, where it first diverges, how to reproduce it."""

    case: Case
    found_by: str          # the battery case it was shrunk from, or "search"
    what: str              # "output", "lse", "gradient of key", "the call"
    divergence: Divergence
    worst_ulps: float
    reproducer: str

    def __str__(self) -> str:
        lines = [f"FAIL ({self.what}) {self.found_by}: shrunk to {self.case.describe()}",
                 f"  where: {self.divergence.text}"]
        if self.divergence.table:
            lines.append(self.divergence.table)
        lines.append(f"  worst error: {_ulps(self.worst_ulps)} ULPs")
        lines.append("  reproduce:")
        lines += [f"    {line}" for line in self.reproducer.splitlines()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"what": self.what, "found_by": self.found_by, "case": self.case.describe(),
                "stage": self.divergence.stage, "query": self.divergence.query,
                "key": self.divergence.key, "where": self.divergence.text,
                "worst_ulps": self.worst_ulps, "reproducer": self.reproducer}


@dataclass
class Report:
    """What :func:`~routing_sim.testing.check_attention` found.

    ``passed`` is True when no case failed; ``failures`` holds each failure shrunk to a
    minimal case; ``by_feature`` maps every checked feature (each pattern and shape named,
    and ``lse`` or ``backward`` if asked) to its :class:`FeatureResult`. ``str(report)`` is
    the table.
    """

    name: str
    layout: str
    dtype: str
    kind: str
    features: tuple[str, ...]
    tolerance: str
    by_feature: dict[str, FeatureResult] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        """One line per feature: cases, failures, worst error in ULPs and / tolerance."""
        rows = [f"{'feature':<14}{'cases':>7}{'failed':>8}{'worst ULPs':>13}"
                f"{'worst / tolerance':>19}"]
        for name, result in self.by_feature.items():
            rows.append(f"{name:<14}{result.cases:>7}{result.failed:>8}"
                        f"{_ulps(result.worst_ulps):>13}{result.worst_ratio:>19.3g}")
        return rows

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} failures)"
        lines = [f"{self.name} ({self.kind}, layout {self.layout}, {self.dtype}) against "
                 f"the routing_sim oracle: {verdict}", *self.lines(),
                 f"tolerance: {self.tolerance}"]
        lines += [f"note: {note}" for note in self.notes]
        for failure in self.failures:
            lines += ["", str(failure)]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as JSON-ready data (``routing-sim check --json``)."""
        return {"name": self.name, "layout": self.layout, "dtype": self.dtype,
                "kind": self.kind, "features": list(self.features), "passed": self.passed,
                "tolerance": self.tolerance, "notes": self.notes,
                "by_feature": {name: vars(result) for name, result in self.by_feature.items()},
                "failures": [failure.to_json() for failure in self.failures]}


def _ulps(value: float) -> str:
    """ULPs as they read best: ``0.5``, ``12``, ``3.4e+15``."""
    if value >= 1e5:
        return f"{value:.2g}"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"
