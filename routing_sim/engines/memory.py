"""Memory budget: estimate what a run will allocate, and refuse before allocating it.

A simulated run keeps a few numbers per route (scores, shares, arrival times, indices),
a dense ``(G, L, S)`` route mask unless its routes come as a RouteSet, and with
``trace="full"`` one row per message. At tens of thousands of tokens that is tens or
hundreds of GB, and numpy would fail late with a raw ``MemoryError`` (or the OOM killer
would end the process). Entry points call :func:`check` with an :func:`estimate` first and raise
:class:`~routing_sim.errors.MemoryBudgetError` within seconds instead, naming the estimate
and what would make the run fit.

The budget (:func:`available_memory`) is the smallest of

* the memory the system reports available (``MemAvailable`` on Linux, else the physical
  memory),
* the address-space limit (``ulimit -v``, ``RLIMIT_AS``) minus what the process already
  uses,
* the cgroup v2 memory limit (containers) minus what the cgroup already uses,
* the environment variable ``ROUTING_SIM_MEMORY`` (bytes, or with a suffix: ``"16G"``,
  ``"512M"``), which also lets a user raise the budget above the system's answer.

The per-route cost depends on the path the run takes (:func:`route_path`): the fast engine
keeps about 30 bytes a route on the full graph's row blocks but several times that on the
online, exact and per-node paths. Each number in :data:`ROUTE_BYTES`,
:data:`FEATURE_ROUTE_BYTES`, :data:`BACKWARD_ROUTE_BYTES` and :data:`MESSAGE_BYTES` is the
largest of the peaks measured for that path, rounded up: one :func:`~routing_sim.simulate`
(or ``run.backward``) per fresh interpreter, float64, E = Ev = 64, random inputs, at two
sizes or more (dense: n = 512 to 4,096, 2 heads, up to 34 M routes; exact and plain from
n = 64; windows of 128 at n = 8,192 and 32,768; random 5 % route sets at n = 1,024 to
4,096), peak taken both as the tracemalloc peak and as the rise of VmHWM over VmRSS before
the call, minus :data:`FIXED_BYTES` and the inputs-and-outputs part of :func:`estimate`
(what the estimate counts apart), divided by the routes. The measured bytes a route
(December 2026, numpy 2, Linux; tests/engines/test_memory.py holds each path to its
tracemalloc peak in-process):

=================  ==========  ==============================================
path               estimate    measured (largest of tracemalloc and RSS)
=================  ==========  ==============================================
row blocks         36          29 (peak / routes without subtracting: 29 to 34)
masked             40          36 (span blocks, causal n = 4,096); per node 30
sparse             112         103 (random routes, per node); tiles 43
online             120         108 (a window); 94 full, 103 causal
exact              152         133
plain              2560        2297 (``engine="plain"``, n = 128)
backward           112         105 (a window); 73 full, 52 full without jitter
=================  ==========  ==============================================

Options add to a path's bytes (measured over the row blocks' 29): 64 with a bias, dropout
or a score_mod (59 with all three), 32 with ``routing="topk"`` (24), 240 on a network that
loses or copies messages (225 at loss and duplicate 0.05; 166 at loss 0.3 and duplicate
0.2), 48 with random delays (jitter, reordering or spikes: 14 to 34 forward, up to 32 on
a backward pass after them), 1,536 with ``delivery="per_message"`` (about 1,300 in all at
n = 48). A full trace adds 128 (two-phase, 113 measured) or 320 (online, 289) per message, a
dense mask :data:`MASK_BYTES` per ``(G, L, S)`` entry. They are estimates, not guarantees.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, MemoryBudgetError
from ..numerics.tiles import ROW_BLOCK_ROWS

if TYPE_CHECKING:
    from ..network.conditions import Network
    from ..routes.problem import Problem

__all__ = ["ENVIRONMENT", "MemoryEstimate", "available_memory", "check", "check_simulation",
           "estimate", "format_bytes", "route_path", "run_features"]

ENVIRONMENT = "ROUTING_SIM_MEMORY"
# Bytes a route of each path (:func:`route_path`), trace="summary"; measured, see above.
ROUTE_BYTES = {"row blocks": 36, "masked": 40, "sparse": 112, "online": 120, "exact": 152,
               "plain": 2560}
BACKWARD_ROUTE_BYTES = 112  # run.backward, per route, trace="summary" (measured 73-105)
# Added to a path's bytes a route by options that keep more per route (measured 59, 24, 225,
# 14-34 forward and up to 32 backward, about 1,300).
FEATURE_ROUTE_BYTES = {"scores": 64, "top_k": 32, "faulty": 240, "random delays": 48,
                       "per message": 1536}
MESSAGE_BYTES = {"two_phase": 128, "online": 320}  # per message of a full trace (113, 289)
MASK_BYTES = 4         # per (G, L, S) entry: the bool mask and its temporaries (measured 4)
FIXED_BYTES = 4 * 2**20  # any run: Python objects, first-call imports (measured 2.3 MB)
MESSAGES_PER_ROUTE = 4                            # QUERY, SCORE, PULL, VALUE
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# A run needing at most 1/SMALL_SHARE of the system budget last read is not checked again:
# the files behind the budget cost more to read than such a run (a decoding step) takes.
SMALL_SHARE = 1024
_LAST_READING = [0]                  # the system budget at the last full check (bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run would allocate, by part (bytes).

    Examples
    --------
    >>> part = MemoryEstimate({"routes": 3 * 2**30, "trace rows": 2**30})
    >>> part.total == 4 * 2**30, str(part)
    (True, '4.0 GB (routes 3.0 GB, trace rows 1.0 GB)')
    """

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __str__(self) -> str:
        shown = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items()
                          if size)
        return f"{format_bytes(self.total)} ({shown})"


def route_path(groups: int, n_queries: int, n_keys: int, routes: int, *,
               softmax: str = "two_phase", numerics: str = "float", engine: str = "fast",
               dense: bool = True, backward: bool = False) -> str:
    """The path of :data:`ROUTE_BYTES` a run takes, from what is known before it allocates.

    The full graph (every one of the ``G·L·S`` routes, at least two query rows) computes
    on row blocks; another dense mask on span blocks or per node (``"masked"``, which
    costs the more of the two); a RouteSet on tiles or per node (``"sparse"``, the same);
    online, exact and the plain engine on their own paths whatever the routes.

    Examples
    --------
    >>> route_path(8, 4096, 4096, 8 * 4096**2), route_path(1, 64, 64, 64 * 65 // 2)
    ('row blocks', 'masked')
    >>> route_path(1, 64, 64, 640, dense=False), route_path(1, 64, 64, 4096, softmax="online")
    ('sparse', 'online')
    """
    if backward:
        return "backward"
    if engine == "plain":
        return "plain"
    if numerics == "exact":
        return "exact"
    if softmax == "online":
        return "online"
    if not dense:
        return "sparse"
    if routes == groups * n_queries * n_keys and n_queries >= ROW_BLOCK_ROWS:
        return "row blocks"
    return "masked"


def run_features(problem: Problem, network: Network, top_k: int | None = None,
                 delivery: str = "window") -> frozenset[str]:
    """The options of a run that keep more per route: :func:`estimate`'s ``features``.

    Examples
    --------
    >>> import numpy as np
    >>> import routing_sim as rs
    >>> from routing_sim.routes.problem import prepare
    >>> q = np.ones((4, 2))
    >>> problem = prepare(q, q, q, np.zeros((4, 4)), 0.0, False, None, False)   # a bias
    >>> sorted(run_features(problem, rs.Network(loss=0.1), top_k=2))
    ['faulty', 'scores', 'top_k']
    >>> sorted(run_features(problem, rs.Network(jitter=0.5), delivery="per_message"))
    ['per message', 'random delays', 'scores']
    """
    sparse = problem.sparse
    bias = problem.bias if sparse is None else sparse.bias
    keep = problem.keep if sparse is None else sparse.keep
    scores = bias is not None or keep is not None or problem.score_mod is not None
    named = {"scores": scores, "top_k": top_k is not None,
             "faulty": network.faulty or network.duplicate > 0,
             "random delays": network.random_delays, "per message": delivery == "per_message"}
    return frozenset(name for name, present in named.items() if present)


def estimate(groups: int, n_queries: int, n_keys: int, routes: int, *, dim: int = 0,
             value_dim: int = 0, itemsize: int = 8, trace: str = "summary",
             softmax: str = "two_phase", numerics: str = "float", engine: str = "fast",
             features: Collection[str] = (), transmissions: float = 1.0, dense: bool = True,
             backward: bool = False) -> MemoryEstimate:
    """Estimate the memory of a simulated run with ``routes`` routes in ``groups`` groups.

    Parameters
    ----------
    groups, n_queries, n_keys : int
        ``G`` routing groups (batch × heads) of ``L`` query and ``S`` key tokens.
    routes : int
        How many routes exist (at most ``G·L·S``).
    dim, value_dim, itemsize : int
        Feature sizes ``E``, ``Ev`` and bytes per number (inputs and outputs).
    trace : {"full", "summary"}
        A full trace adds a row per message.
    softmax, numerics, engine : str
        As in :func:`~routing_sim.simulate`; with ``dense`` and ``backward`` they choose
        the path (:func:`route_path`) whose bytes a route count.
    features : collection of str
        Options that keep more per route (:data:`FEATURE_ROUTE_BYTES`): ``"scores"`` (a
        bias, dropout or a score_mod), ``"top_k"`` (hard routing), ``"faulty"`` (a network
        that loses or copies messages), ``"random delays"`` (jitter, reordering or spikes:
        a time per message), ``"per message"`` (one Python object a message).
    transmissions : float
        Expected transmissions per message (``(1 + duplicate) / (1 - loss)`` on a lossy
        network); only a full trace grows with it.
    dense : bool
        The routes come from a dense ``(G, L, S)`` bool mask (an attention mask, no
        RouteSet); False for a sparse route set. The mask's bytes count unless it allows
        every route (then it is one broadcast value). ``run.weights`` is not counted: it
        is built on first use and only up to :data:`~routing_sim.run.WEIGHTS_LIMIT` entries.
    backward : bool
        Estimate :meth:`Run.backward <routing_sim.Run.backward>` instead (its four gradient
        messages per route, on top of the forward run already in memory).

    Examples
    --------
    >>> full = estimate(1, 24_000, 24_000, 24_000**2, trace="full")
    >>> full.total > 250 * 2**30               # a full trace at n = 24,000: hundreds of GB
    True
    >>> window = estimate(1, 24_000, 24_000, 24_000 * 64, dense=False)   # 64-wide window
    >>> window.total < 2**30
    True
    >>> heads_8 = estimate(8, 4096, 4096, 8 * 4096**2, dim=64, value_dim=64)  # row blocks
    >>> str(heads_8)
    '4.6 GB (fixed 4.0 MB, inputs and outputs 80.0 MB, per-route state 4.5 GB)'
    """
    unknown = set(features) - FEATURE_ROUTE_BYTES.keys()
    if unknown:
        raise InvalidArgumentError(f"features must be among {sorted(FEATURE_ROUTE_BYTES)}, "
                                   f"got {sorted(unknown)}")
    entries = groups * n_queries * n_keys                               # G·L·S
    path = route_path(groups, n_queries, n_keys, routes, softmax=softmax, numerics=numerics,
                      engine=engine, dense=dense, backward=backward)
    per_route = BACKWARD_ROUTE_BYTES if backward else ROUTE_BYTES[path]
    per_route += sum(FEATURE_ROUTE_BYTES[feature] for feature in set(features))
    parts = {
        "fixed": FIXED_BYTES,
        "inputs and outputs": groups * (n_queries * (dim + 2 * value_dim)
                                        + n_keys * (dim + value_dim)) * itemsize,
        "dense route mask": entries * MASK_BYTES if dense and routes < entries else 0,
        "per-route state": routes * per_route,
        "trace rows": math.ceil(routes * MESSAGES_PER_ROUTE * transmissions
                                * MESSAGE_BYTES[softmax]) if trace == "full" else 0,
    }
    return MemoryEstimate(parts)


def available_memory() -> tuple[int, str]:
    """The memory budget in bytes and where it comes from (see the module docstring).

    Examples
    --------
    >>> size, source = available_memory()
    >>> size > 0 and isinstance(source, str)
    True
    """
    limits = []
    override = os.environ.get(ENVIRONMENT)
    if override:
        return parse_bytes(override), f"{ENVIRONMENT}={override}"
    system = _meminfo("MemAvailable")
    if system is not None:
        limits.append((system, "memory available"))
    else:
        try:
            limits.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                           "physical memory"))
        except (ValueError, OSError, AttributeError):
            pass
    address_space = _address_space()
    if address_space is not None:
        limits.append(address_space)
    group = _cgroup()
    if group is not None:
        limits.append(group)
    return min(limits) if limits else (2**63, "no known limit")


def check(needed: MemoryEstimate, what: str, way_out: str) -> None:
    """Raise :class:`~routing_sim.errors.MemoryBudgetError` if ``needed`` exceeds the budget.

    ``what`` names the run (``"simulate at L = S = 24,000 with trace='full'"``) and
    ``way_out`` says what would make it fit.

    Examples
    --------
    >>> check(MemoryEstimate({"routes": 1024}), "a tiny run", "nothing")
    >>> check(MemoryEstimate({"routes": 2**62}), "a huge run", "fewer routes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    routing_sim.errors.MemoryBudgetError: a huge run would need about 4194304.0 TB ...
    """
    system = not os.environ.get(ENVIRONMENT)
    if system and needed.total * SMALL_SHARE <= _LAST_READING[0]:
        return                       # a small run: reading /proc again costs more than it
    budget, source = available_memory()
    if system:
        _LAST_READING[0] = budget
    if needed.total > budget:
        raise MemoryBudgetError(f"{what} would need about {needed} but {format_bytes(budget)} "
                                f"is available ({source}); {way_out}; or set {ENVIRONMENT} "
                                "(bytes, e.g. 64G) to raise the budget")


def check_simulation(shape: tuple[int, int, int, int, int], routes: int, *, trace: str,
                     softmax: str = "two_phase", numerics: str = "float", engine: str = "fast",
                     features: Collection[str] = (), itemsize: int = 8,
                     transmissions: float = 1.0, dense: bool = True,
                     backward: bool = False) -> None:
    """:func:`check` a simulated run of ``shape = (G, L, S, E, Ev)`` with ``routes`` routes.

    The way out named in the error is ``trace="summary"`` (with its own estimate) for a
    full trace, and fewer routes (a sparse pattern) in every case. The other keywords are
    :func:`estimate`'s.

    Examples
    --------
    >>> check_simulation((1, 8, 8, 4, 4), 36, trace="full")        # a small causal run
    """
    groups, n_queries, n_keys, dim, value_dim = shape
    sized = partial(estimate, groups, n_queries, n_keys, routes, dim=dim, value_dim=value_dim,
                    itemsize=itemsize, softmax=softmax, numerics=numerics, engine=engine,
                    features=features, transmissions=transmissions, dense=dense,
                    backward=backward)
    needed, summary = sized(trace=trace), sized(trace="summary")
    way_out = "fewer routes: a sparse pattern such as graph=rs.patterns.sliding_window(n, 64)"
    if trace == "full":
        way_out = f"trace='summary' (about {format_bytes(summary.total)}), or " + way_out
    entry = "run.backward" if backward else "simulate"
    check(needed, f"{entry} with {routes:,} routes (G = {groups}, L = {n_queries}, "
                  f"S = {n_keys}) and trace={trace!r}", way_out)


def format_bytes(size: float) -> str:
    """``1536 -> '1.5 KB'`` (binary units).

    Examples
    --------
    >>> format_bytes(1536), format_bytes(3 * 2**30)
    ('1.5 KB', '3.0 GB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def parse_bytes(text: str) -> int:
    """``"16G" -> 17179869184``: a byte count with an optional K, M, G or T suffix.

    Examples
    --------
    >>> parse_bytes("512M"), parse_bytes("1024")
    (536870912, 1024)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise InvalidArgumentError(f"{ENVIRONMENT} must be a byte count such as 17179869184, "
                                   f"512M or 16G, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _address_space() -> tuple[int, str] | None:
    """``RLIMIT_AS`` minus the address space this process already maps."""
    try:
        import resource
    except ImportError:                                                # not on Windows
        return None
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except OSError:
        pass
    return max(limit - used, 0), (f"address-space limit {format_bytes(limit)} "
                                  f"(RLIMIT_AS, ulimit -v) minus {format_bytes(used)} in use")


def _cgroup() -> tuple[int, str] | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as limit_file:
            limit = limit_file.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as current_file:
            used = int(current_file.read().strip())
    except (OSError, ValueError):
        return None
    return max(int(limit) - used, 0), f"cgroup memory limit {format_bytes(int(limit))}"
