"""``check_attention`` and ``assert_attention_close``: a kernel against the oracle.

A check runs the fixed battery (:func:`~routing_sim.testing.cases.battery`), then a
hypothesis search (:mod:`routing_sim.testing.strategies`, when hypothesis is installed).
Every case is judged against :func:`~routing_sim.testing.oracle.expect`; a failing case is
shrunk (hypothesis shrinks what its search finds, :func:`~routing_sim.testing.cases.smaller`
what the battery finds) and then diagnosed (:mod:`~routing_sim.testing.diagnose`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .calling import (
    Kind,
    Outcome,
    call,
    canonical,
    case_from_call,
    detect,
    leaving_out,
    reproducer,
    unstated,
)
from .cases import (
    OUTPUTS,
    PATTERNS,
    SHAPES,
    Case,
    battery,
    check_features,
    forms,
    ordered,
    smaller,
)
from .diagnose import Divergence, diverges
from .oracle import Expected, correctly_rounded, describe_tolerance, expect
from .precision import check_dtype, ulp
from .report import Failure, FeatureResult, Report

__all__ = ["assert_attention_close", "check_attention"]

_SHRINK_CALLS = 400         # the most cases one failure's shrinking may run


@dataclass(frozen=True)
class Judgement:
    """One case's verdict: what failed first (``""`` when it passed), the first failing
    query, and the worst errors in ULPs and as a fraction of the tolerance."""

    what: str = ""
    row: tuple[int, int, int] | None = None
    detail: str = ""
    ulps: float = 0.0
    ratio: float = 0.0
    lse_ulps: float = 0.0
    lse_ratio: float = 0.0
    gradient_ulps: float = 0.0
    gradient_ratio: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.what


def judge(case: Case, expected: Expected, outcome: Outcome) -> Judgement:
    """Compare the kernel's answer with the oracle's, within the tolerance."""
    if outcome.error is not None or outcome.output is None:
        return Judgement("the call", detail=f"the kernel {outcome.error}", ulps=np.inf,
                         ratio=np.inf)
    output = outcome.output
    error = _output_error(case, expected, output)                      # (B, Hq, L, Ev)
    with np.errstate(over="ignore"):           # a subnormal tolerance, a huge error
        ratio = error / expected.tolerance
        ulps = _in_ulps(error, expected.magnitude, case.dtype)
    found = {"ulps": float(ulps.max(initial=0.0)), "ratio": float(ratio.max(initial=0.0))}
    what, row, detail = "", None, ""
    failing = np.argwhere((ratio > 1).any(-1))
    if len(failing):
        what, row = "output", (int(failing[0][0]), int(failing[0][1]), int(failing[0][2]))
    if case.lse and expected.lse is not None and expected.lse_tolerance is not None:
        assert outcome.lse is not None                                 # call() checks it
        same_inf = np.isneginf(outcome.lse) & np.isneginf(expected.lse)
        with np.errstate(invalid="ignore"):
            lse_error = np.where(same_inf, 0.0, np.abs(outcome.lse - expected.lse))
        lse_error = np.where(np.isnan(lse_error), np.inf, lse_error)
        size = np.where(np.isfinite(expected.lse), np.abs(expected.lse), 0.0)
        lse_dtype = "float64" if case.dtype == "float64" else "float32"
        with np.errstate(over="ignore"):
            lse_ratio = lse_error / expected.lse_tolerance
            lse_ulps = _in_ulps(lse_error, size, lse_dtype)
        found.update(lse_ulps=float(lse_ulps.max(initial=0.0)),
                     lse_ratio=float(lse_ratio.max(initial=0.0)))
        bad = np.argwhere(lse_ratio > 1)
        if len(bad) and not what:
            b, h, i = (int(x) for x in bad[0])
            what, row = "lse", (b, h, i)
            hint = _lse_hint(float(outcome.lse[b, h, i]), float(expected.lse[b, h, i]), case)
            detail = (f"lse, query {i} (batch {b}, head {h}): the kernel's log-sum-exp is "
                      f"{float(outcome.lse[b, h, i])!r}, the oracle's "
                      f"{float(expected.lse[b, h, i])!r} "
                      f"(row max {expected.row_max[b, h, i]:.6g}, normaliser "
                      f"{expected.normaliser[b, h, i]:.6g}, scale {case.effective_scale:.6g})"
                      f"{hint}")
    if expected.gradients is not None:
        assert expected.gradient_tolerance is not None and expected.gradient_magnitude is not None
        gradients = outcome.gradients or (None,) * len(expected.gradients)
        names = ("query", "key", "value", "sinks")
        for name, got, want, tolerance, size in zip(names, gradients, expected.gradients,
                                                    expected.gradient_tolerance,
                                                    expected.gradient_magnitude):
            if got is None or got.shape != want.shape:
                gradient_error = np.full(want.shape, np.inf)
            else:
                gradient_error = np.abs(got - want)
                gradient_error[~np.isfinite(gradient_error)] = np.inf
            with np.errstate(over="ignore"):
                gradient_ratio = gradient_error / tolerance
                gradient_ulps = _in_ulps(gradient_error, size, case.dtype)
            found["gradient_ulps"] = max(found.get("gradient_ulps", 0.0),
                                         float(gradient_ulps.max(initial=0.0)))
            found["gradient_ratio"] = max(found.get("gradient_ratio", 0.0),
                                          float(gradient_ratio.max(initial=0.0)))
            bad = np.argwhere(gradient_ratio > 1)
            if len(bad) and not what:
                index = tuple(int(x) for x in bad[0])
                where = f"head {index[0]}" if name == "sinks" else \
                    "batch {}, head {}, token {}, feature {}".format(*index)
                what = f"gradient of {name}"
                detail = (f"gradient of {name}, {where}: "
                          + ("the kernel gave none" if got is None or got.shape != want.shape
                             else f"{float(got[index])!r}, expected {float(want[index])!r}"
                             f"{_sign_hint(float(got[index]), float(want[index]))}"))
    return Judgement(what, row, detail, **found)


def _in_ulps(error: np.ndarray, magnitude: np.ndarray, dtype: str) -> np.ndarray:
    """Errors in ULPs of ``dtype`` at their magnitudes; where the magnitude is 0 (an answer
    that is exactly zero) the tolerance alone judges, and the ULPs count 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(magnitude > 0, error / ulp(magnitude, dtype), 0.0)


def _sign_hint(kernel: float, oracle: float) -> str:
    """A hint when a gradient is the oracle's with the sign flipped."""
    if oracle != 0 and abs(kernel + oracle) <= 1e-6 * abs(oracle):
        return ": the oracle's with the sign flipped"
    return ""


def _lse_hint(kernel: float, oracle: float, case: Case) -> str:
    """A hint when the kernel's log-sum-exp is the oracle's over or times the scale."""
    scale = case.effective_scale
    for factor, how in ((1 / scale, "divided by"), (scale, "multiplied by")):
        if oracle != 0 and factor != 1 and abs(kernel - oracle * factor) <= 1e-9 * abs(kernel):
            return (f"; it is the oracle's {how} the scale: the log-sum-exp of q·k without "
                    "the scale?" if how == "divided by" else
                    f"; it is the oracle's {how} the scale: the scale applied twice?")
    return ""


def _output_error(case: Case, expected: Expected, output: np.ndarray) -> np.ndarray:
    """``|output - true output|``: against the float64 reference, and against the
    correctly rounded result on the rows the decision needs (float64 without softcap): those
    where the reference's own bound leaves it open, and the worst row."""
    with np.errstate(invalid="ignore"):
        error = np.abs(output - expected.output)                       # (B, Hq, L, Ev)
    error[~np.isfinite(error)] = np.inf
    if not expected.exact:
        return error
    margin = expected.bound / 2 + ulp(expected.magnitude, "float64") / 2
    tolerance = expected.tolerance
    open_rows = ((error + margin > tolerance) & (error - margin <= tolerance)).any(-1)
    with np.errstate(over="ignore"):
        worst = np.unravel_index(np.argmax((error / tolerance).max(-1)), open_rows.shape)
    open_rows[worst] = np.isfinite(error[worst]).all()
    rows = np.argwhere(open_rows)
    if len(rows):
        exact = correctly_rounded(case, rows)                          # (N, Ev)
        b, h, i = rows.T
        error[b, h, i] = np.abs(output[b, h, i] - exact)
    return error


class _Checker:
    """Runs cases on one kernel, keeps the table, shrinks and diagnoses failures."""

    def __init__(self, fn: Callable, layout: str, kind: Kind, name: str | None,
                 chosen: frozenset[str], dtype: str) -> None:
        self.left_out = unstated(fn, chosen, layout)    # flags fn has no parameter for
        self.fn = leaving_out(fn, self.left_out)
        self.layout, self.kind, self.name, self.chosen = layout, kind, name, chosen
        # What every case has, and so no failure needs: full attention, or the one
        # pattern a kernel computes; padded sequences, or the one shape it takes.
        patterns, shapes = chosen & PATTERNS, chosen & SHAPES
        self.always = (patterns if len(patterns) == 1 else frozenset({"full"})) | \
            (shapes if len(shapes) == 1 else frozenset({"padded"}))
        # A line for padded only beside another shape: alone it would count every case.
        rows = chosen - {"padded"} if shapes == {"padded"} else chosen
        self.report = Report(name or str(getattr(fn, "__qualname__", repr(fn))), layout, dtype,
                             kind, tuple(ordered(rows)),
                             describe_tolerance(dtype))
        for feature in self.report.features:
            self.report.by_feature[feature] = FeatureResult()

    def run(self, case: Case) -> tuple[Judgement, Expected, Outcome]:
        expected = expect(case)
        outcome = call(self.fn, case, self.layout, self.kind)
        return judge(case, expected, outcome), expected, outcome

    def record(self, case: Case, judgement: Judgement) -> None:
        """Count the case under each feature it uses (its pattern included)."""
        features = case.features(self.layout)
        for row in (features - OUTPUTS) & self.report.by_feature.keys():
            self.report.by_feature[row].add(judgement.passed and not judgement.what,
                                            judgement.ulps, judgement.ratio)
        called = judgement.what != "the call"
        if "lse" in features:
            self.report.by_feature["lse"].add(
                called and judgement.what != "lse",
                judgement.lse_ulps if called else np.inf, judgement.lse_ratio if called else np.inf)
        if "backward" in features:
            self.report.by_feature["backward"].add(
                called and not judgement.what.startswith("gradient"),
                judgement.gradient_ulps if called else np.inf,
                judgement.gradient_ratio if called else np.inf)

    def searcher(self) -> Callable[[Case], bool]:
        """Whether a case fails, counting it in the table until the first failure (the
        cases after it are hypothesis shrinking that failure)."""
        searching = True

        def fails(case: Case) -> bool:
            nonlocal searching
            judgement = self.run(case)[0]
            if searching:
                self.record(case, judgement)
            searching = searching and judgement.passed
            return not judgement.passed

        return fails

    def explained(self, case: Case, judgement: Judgement) -> bool:
        """Whether an earlier failure already explains this one: the same kind of
        failure, on a minimal case that needs no feature this case lacks."""
        return any(failure.what == judgement.what
                   and failure.case.features(self.layout) - self.always
                   <= case.features(self.layout)
                   for failure in self.report.failures)

    def fails_like(self, case: Case, judgement: Judgement) -> bool:
        """Whether ``case`` fails as ``judgement`` did: a kernel that raises fails like
        one that raises; a wrong answer shrinks only to a wrong answer."""
        found = self.run(case)[0]
        if found.passed:
            return False
        return (found.what == "the call") == (judgement.what == "the call")

    def shrink(self, case: Case, judgement: Judgement) -> Case:
        """The smallest case :func:`smaller` reaches that still fails like ``case``."""
        calls = 0
        progress = True
        while progress and calls < _SHRINK_CALLS:
            progress = False
            for candidate in smaller(case):
                if not candidate.features(self.layout) <= self.chosen:
                    continue                # e.g. a causal-only kernel on a full case
                calls += 1
                if self.fails_like(candidate, judgement):
                    case, progress = candidate, True
                    break
                if calls >= _SHRINK_CALLS:
                    break
        return case

    def add_failure(self, case: Case, found_by: str) -> None:
        """Diagnose a (minimal) failing case and add it to the report."""
        judgement, expected, outcome = self.run(case)
        if judgement.passed:            # only a flaky kernel passes the case it failed
            self.report.notes.append(f"{found_by}: failed once, then passed on {case.describe()}")
            return
        if judgement.what == "output":
            assert judgement.row is not None and outcome.output is not None
            where = diverges(self.fn, case, self.layout, self.kind, expected, judgement.row,
                             outcome.output)
        else:
            stage = judgement.what.split(" of ")[0]
            where = Divergence(stage, judgement.row, None, judgement.detail)
        worst = {"lse": judgement.lse_ulps}.get(judgement.what, judgement.ulps) \
            if not judgement.what.startswith("gradient") else judgement.gradient_ulps
        self.report.failures.append(Failure(case, found_by, judgement.what, where, worst,
                                            reproducer(case, self.layout, self.kind,
                                                       self.name, self.left_out)))


def check_attention(fn: Callable, *, layout: str = "sdpa", features: Any = (),
                    dtype: Any = None, cases: int | None = None, seed: int = 0,
                    name: str | None = None) -> Report:
    """Check an attention function against the oracle: the fixed battery at the edges
    where kernels break, then a hypothesis search; every failure shrunk to a minimal case.

    Parameters
    ----------
    fn : callable
        ``fn(q, k, v, **kwargs)``, numpy arrays or torch tensors (detected).
    layout : {"sdpa", "flash"}
        ``"sdpa"``: ``(B, H, L, E)`` inputs with ``scaled_dot_product_attention``'s
        keyword names; ``"flash"``: ``(B, L, H, E)`` with ``flash_attn_func``'s
        (:mod:`routing_sim.testing.calling` lists them all).
    features : iterable of str or str
        What ``fn`` supports, from full, mask, causal, bottom_right, gqa, window, softcap,
        alibi, sinks, padded, varlen, lse, dropout_mask, decode, value_dim, backward (a
        comma-separated string works). The **patterns** full (every query reaches every
        key), causal, bottom_right and window are what ``fn`` computes, and each case
        follows one of those named: ``["causal"]`` checks a causal-only kernel on causal
        cases only (called without ``is_causal`` / ``causal`` if it takes no such
        keyword), ``["full", "causal"]`` a kernel that does both, on both; naming no
        pattern means full. The **shapes** padded (a batch of equal lengths), varlen
        (packed sequences with ``cu_seqlens``) and decode (one query) are the inputs
        ``fn`` takes, and each case has one of those named: ``["varlen"]`` checks a
        packed-only kernel (``flash_attn_varlen_func``) on packed cases only, the
        battery's edges packed too, ``["padded", "varlen"]`` one that takes both; naming
        no shape means padded. The other features are options ``fn`` also takes: each
        adds its cases, and cases without it run too. ``value_dim`` adds value head dims
        other than the query/key head dim; ``lse`` and ``backward`` are asked of every
        case (``backward`` with ``sinks`` checks their gradient too).
    dtype : str, numpy or torch dtype, optional
        The dtype ``fn`` is called in: float64 (the default), float32, float16 or
        bfloat16 (torch functions only).
    cases : int, optional
        How many cases the hypothesis search draws in all (default 100; 0: the battery
        only).
    seed : int
        The search's seed: the same seed draws the same cases.
    name : str, optional
        How the report and the reproducers name ``fn``: ``"package.module:function"``
        (or ``"path/to/file.py:function"``) makes the reproducers import it.

    Returns
    -------
    Report
        ``.passed``, ``.failures``, ``.by_feature``; ``str(report)`` is a table.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> def mine(q, k, v, is_causal=False, scale=None):
    ...     scores = q @ np.swapaxes(k, -1, -2) * (scale or q.shape[-1] ** -0.5)
    ...     if is_causal:
    ...         scores = np.where(np.tri(*scores.shape[-2:], dtype=bool), scores, -np.inf)
    ...     weights = np.exp(scores - scores.max(-1, keepdims=True))
    ...     return weights / weights.sum(-1, keepdims=True) @ v
    >>> report = rs.testing.check_attention(mine, features=["full", "causal"], cases=0)
    >>> report.passed, report.by_feature["full"].cases, report.by_feature["causal"].cases
    (True, 20, 5)
    """
    chosen = check_features(features, layout)
    dtype_name = check_dtype(dtype)
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int)
                              or cases < 0):
        raise InvalidArgumentError(f"cases must be an int >= 0, got {cases!r}")
    kind = detect(fn, layout, dtype_name, ordered(chosen & SHAPES))
    if "backward" in chosen and kind != "torch":
        raise InvalidArgumentError("feature 'backward' takes the gradients with torch's "
                                   "autograd: fn must take torch tensors")
    if dtype_name == "bfloat16" and kind != "torch":
        raise InvalidArgumentError("numpy has no bfloat16: check a torch fn in bfloat16")
    checker = _Checker(fn, layout, kind, name, chosen, dtype_name)
    for case in battery(chosen, layout, dtype_name):
        judgement = checker.run(case)[0]
        checker.record(case, judgement)
        if not judgement.passed and not checker.explained(case, judgement):
            checker.add_failure(checker.shrink(case, judgement), f"battery case '{case.label}'")
    _search(checker, chosen, layout, dtype_name, 100 if cases is None else cases, seed)
    named = ordered(chosen & (PATTERNS | SHAPES))
    for feature in ordered(chosen - OUTPUTS - PATTERNS):
        if not forms(feature, chosen, layout):
            checker.report.notes.append(
                f"{feature}: no case, it combines with none of the patterns and shapes "
                f"named ({', '.join(named)}) in layout {layout!r}")
    return checker.report


def _search(checker: _Checker, chosen: frozenset[str], layout: str, dtype: str, count: int,
            seed: int) -> None:
    """The hypothesis search: for each pattern, shape other than padded and option
    chosen, cases that use it (and a random choice of the others; plain cases for
    ``full``); hypothesis shrinks the first failure."""
    if count == 0:
        return
    try:
        import hypothesis

        from . import strategies
    except ImportError:
        checker.report.notes.append("hypothesis is not installed (pip install "
                                    "'routing_sim[testing]'): the battery ran, no search")
        return
    groups = [name for name in ordered(chosen - OUTPUTS - {"padded"})
              if forms(name, chosen, layout)]
    each = max(1, count // len(groups))
    draw = random.Random(seed)
    for group in groups:
        if any(failure.case.features(layout) - OUTPUTS - checker.always <= {group}
               for failure in checker.report.failures):
            continue                    # a failure already shows what this search would
        # full attention's search draws plain cases; every other, any chosen features.
        features = chosen & (OUTPUTS | SHAPES) | {"full"} if group == "full" else chosen
        strategy = strategies.cases(features=features, layout=layout, dtype=dtype,
                                    require=group)
        settings = hypothesis.settings(max_examples=each, database=None, deadline=None)
        try:
            found = hypothesis.find(strategy, checker.searcher(), settings=settings,
                                    random=draw)
        except hypothesis.errors.NoSuchExample:
            continue
        if not checker.explained(found, checker.run(found)[0]):
            checker.add_failure(found, f"search ({group})")


def assert_attention_close(actual: Any, query: Any, key: Any, value: Any, *,
                           layout: str = "sdpa", d_output: Any = None,
                           gradients: Any = None, **kwargs: Any) -> None:
    """Assert that ``actual`` is what attention of ``query``, ``key``, ``value`` with the
    layout's keyword arguments returns, within the oracle's tolerance.

    ``actual`` is the output, or ``(output, lse)`` with ``return_lse=True``; ``kwargs``
    are the keywords the kernel got (:func:`check_attention`'s layouts). With
    ``d_output`` and ``gradients`` (``(q.grad, k.grad, v.grad)``), the gradients are
    checked too. Raises AssertionError naming the first query (or gradient) that is off,
    with the expected and actual values.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> q = k = v = np.eye(3)[None, None]
    >>> out = rs.attention(q, k, v, is_causal=True)
    >>> rs.testing.assert_attention_close(out, q, k, v, is_causal=True)
    >>> rs.testing.assert_attention_close(out * (1 + 1e-9), q, k, v,
    ...                                   is_causal=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: output, query 0 (batch 0, head 0), element 0: 1.000000001, expected 1.0 ...
    """
    case = case_from_call(query, key, value, layout, **kwargs)
    packed = case.cu_seqlens is not None
    if d_output is not None:
        case = replace(case, d_output=canonical(d_output, layout, packed))
    expected = expect(case)
    output, lse = actual if case.lse else (actual, None)
    outcome = Outcome(canonical(output, layout, packed),
                      None if lse is None else canonical(lse, "sdpa", False).reshape(
                          case.query.shape[:3]),
                      None if gradients is None else      # d_sinks: (H,) in either layout
                      tuple(canonical(g, layout if n < 3 else "sdpa", packed and n < 3)
                            for n, g in enumerate(gradients)))
    judgement = judge(case, expected, outcome)
    if judgement.passed:
        return
    if judgement.what == "output":
        assert judgement.row is not None and outcome.output is not None
        b, h, i = judgement.row
        row = outcome.output[b, h, i]
        with np.errstate(over="ignore", divide="ignore"):    # inf: far outside, named first
            errors = np.abs(row - expected.output[b, h, i]) / expected.tolerance[b, h, i]
        c = int(np.argmax(np.where(np.isnan(errors), np.inf, errors)))
        raise AssertionError(
            f"output, query {i} (batch {b}, head {h}), element {c}: {float(row[c])!r}, "
            f"expected {float(expected.output[b, h, i, c])!r} (tolerance "
            f"{expected.tolerance[b, h, i, c]:.3g}; worst error {judgement.ulps:.3g} ULPs) in "
            f"{case.describe()}")
    raise AssertionError(f"{judgement.detail} in {case.describe()}")

