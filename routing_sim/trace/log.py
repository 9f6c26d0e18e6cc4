"""The message log of a run: every message as a row of compact arrays, or just totals.

``detail="full"`` keeps one row per transmission (kind, source and destination token,
group, send and arrival time, bytes, scalar payload, attempt, copy, fate); ``"summary"``
keeps counts, bytes, per-node bytes and latency histograms per kind, so memory does not
grow with the number of messages; ``"auto"`` keeps full rows up to
:data:`AUTO_FULL_LIMIT` messages.

A full trace is also a sequence of :class:`Message` records: ``trace[0]``, ``len(trace)``,
``for message in trace``, and ``trace.to_pandas()`` (pandas optional).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError, SummaryTraceError
from ..network.messages import Fate, Kind, Message, towards_key
from ..network.wave_times import constant
from ..options import TRACE_DETAILS, check_choice
from ..routes.table import RouteTable
from . import exports

if TYPE_CHECKING:
    import pandas

    from ..network.deliveries import Deliveries

__all__ = ["AUTO_FULL_LIMIT", "LATENCY_BINS", "TRACE_DETAILS", "Trace"]

AUTO_FULL_LIMIT = 200_000
LATENCY_BINS = np.concatenate(([0.0], np.geomspace(1e-6, 1e6, 601)))   # 50 bins per decade
COLUMNS = ("kind", "src", "dst", "group", "sent", "arrive", "nbytes", "value", "id", "route",
           "attempt", "copy", "fate", "rescale")


class Trace:
    """Every transmission of a run, ordered by arrival (unarrived last), then message id.

    Columns (``detail="full"``) are numpy arrays of equal length: ``kind``, ``src`` and
    ``dst`` (token positions in their own sequence), ``group`` (flat batch/head index),
    ``sent``, ``arrive`` (NaN if it never arrived), ``nbytes``, ``value`` (the score of a
    SCORE, the share of a two-phase PULL; NaN for the vector payloads of QUERY and VALUE,
    and for an online PULL, which is sent before its node knows its share),
    ``attempt`` (0 for the first try), ``copy`` (1 for a network duplicate), ``fate``
    (see :class:`~routing_sim.network.messages.Fate`), ``rescale`` (online softmax: the factor
    a VALUE's arrival applied) and ``id``. ``kind`` and ``fate`` hold codes: compare them
    with :class:`~routing_sim.Kind` and ``Fate`` members; records (``trace[i]``) name them.

    ``src`` and ``dst`` follow each kind's direction (:attr:`Kind.to_key`): QUERY, PULL,
    GRAD_OUTPUT and GRAD_SCORE go from the query token to the key token, SCORE, VALUE,
    GRAD_SHARE and GRAD_KEY back.

    A summary trace has none of these columns: asking for one raises
    :class:`~routing_sim.errors.SummaryTraceError`, an ``AttributeError``.
    """

    def __init__(self, detail: str, routes: RouteTable, nbytes: dict[Kind, int]) -> None:
        if detail not in ("full", "summary"):
            check_choice("trace", detail, TRACE_DETAILS)
        self.detail = detail
        self.nbytes_of = nbytes
        self.kinds = tuple(nbytes)                                     # the kinds it logs
        self.counts = {kind: 0 for kind in self.kinds}                 # put on the wire
        fates = np.zeros((len(self.kinds), len(Fate)), np.int64)
        self.fates = dict(zip(self.kinds, fates))
        self.duplicates = {kind: 0 for kind in self.kinds}
        histograms = np.zeros((len(self.kinds), len(LATENCY_BINS) - 1), np.int64)
        self.latency_histogram = dict(zip(self.kinds, histograms))
        self._node_bytes = np.zeros((routes.n_groups * routes.span, 2), np.int64)
        self._routes = routes
        # Bytes per route of the whole waves logged so far, towards the key and back: a
        # whole wave adds the same per-node counts, so they are folded in once, when read.
        self._wave_bytes = [0, 0]
        self._parts: list[tuple] = []
        self._columns: dict[str, np.ndarray] | None = None
        self.context: dict = {}

    @property
    def full(self) -> bool:
        return self.detail == "full"

    @property
    def node_bytes(self) -> np.ndarray:
        """``(G · span, 2)``: bytes each physical node sent and received."""
        towards_key, back = self._wave_bytes
        if towards_key or back:
            asker, answerer = self._routes.route_counts()              # routes per node
            self._node_bytes[:, 0] += asker * towards_key + answerer * back
            self._node_bytes[:, 1] += answerer * towards_key + asker * back
            self._wave_bytes = [0, 0]
        return self._node_bytes

    def record(self, batch: Deliveries, fate: np.ndarray | None) -> None:
        """Log transmissions once their fate is known (``fate`` None: all delivered)."""
        kind, size = batch.kind, self.nbytes_of[batch.kind]
        if fate is None and batch.copy is None:                       # the common case
            count = len(batch.routes)
            self.counts[kind] += count
            self.fates[kind][Fate.DELIVERED] += count
            sent, arrive = constant(batch.sent), constant(batch.arrive)
            if sent is not None and arrive is not None:                # one latency for all
                one = _bin_of(arrive - sent)
                self.latency_histogram[kind][one] += count
            else:
                self._add_latency(kind, batch.arrive, batch.sent)
            if count == len(self._routes):     # every route once: a whole wave
                self._wave_bytes[0 if kind.to_key else 1] += size
            else:
                self._add_bytes(kind, batch.routes)
        else:
            senders, receivers = self._routes.endpoints(kind, batch.routes)
            fate = np.zeros(len(batch), np.int8) if fate is None else fate
            originals = batch.copies == 0
            left = originals & (fate != Fate.SENDER_DOWN)
            arrived = fate == Fate.DELIVERED
            self.counts[kind] += int(left.sum())
            self.duplicates[kind] += int((~originals).sum())
            self.fates[kind] += np.bincount(fate, minlength=len(Fate))
            self._add_latency(kind, batch.arrive[arrived], batch.sent[arrived])
            self._node_bytes[:, 0] += np.bincount(senders[left],
                                                  minlength=len(self._node_bytes)) * size
            self._node_bytes[:, 1] += np.bincount(receivers[arrived],
                                                  minlength=len(self._node_bytes)) * size
        if self.full:
            self._parts.append((kind, batch.routes, batch.ids, np.asarray(batch.sent),
                                np.asarray(batch.arrive), batch.copies,
                                np.zeros(len(batch), np.int8) if fate is None else fate))

    def _add_bytes(self, kind: Kind, routes: np.ndarray) -> None:
        size = self.nbytes_of[kind]
        senders, receivers = self._routes.endpoints(kind, routes)
        sent = np.bincount(senders, minlength=len(self._node_bytes))
        received = np.bincount(receivers, minlength=len(self._node_bytes))
        self._node_bytes[:, 0] += sent * size
        self._node_bytes[:, 1] += received * size

    def _add_latency(self, kind: Kind, arrive: np.ndarray, sent: np.ndarray) -> None:
        """Add the latencies ``arrive - sent`` to the histogram, a slice at a time in one
        scratch array (a wave's latencies are millions: never one more array as long)."""
        if not len(arrive):
            return
        latency = np.empty(min(len(arrive), _LATENCY_CHUNK))              # (chunk,) scratch
        for start in range(0, len(arrive), _LATENCY_CHUNK):
            stop = min(start + _LATENCY_CHUNK, len(arrive))
            part = np.subtract(arrive[start:stop], sent[start:stop], out=latency[:stop - start])
            self.latency_histogram[kind] += _latency_counts(part)

    def close(self, payloads: dict[Kind, np.ndarray], rescale: np.ndarray | None,
              context: dict | None = None) -> None:
        """Freeze the log; per-route arrays fill the scalar payloads of each kind in
        ``payloads`` (the score of a SCORE, the share of a PULL, ...) and ``rescale``.

        ``context`` names the nodes and groups and lists node events (budget allocations,
        completed outputs) for the exporters.
        """
        self.context = context or {}
        if not self.full:
            return
        parts = self._parts or [(Kind.QUERY, *(np.zeros(0, t) for t in
                                               (np.int64, np.int64, float, float, np.int8,
                                                np.int8)))]
        kind = np.concatenate([np.full(len(p[1]), int(p[0]), np.uint8) for p in parts])
        route, ids, sent, arrive, copy, fate = (np.concatenate([p[k] for p in parts])
                                                for k in range(1, 7))
        route = route.astype(np.int64)
        order = np.lexsort((copy, ids, np.nan_to_num(arrive, nan=np.inf)))
        kind, route, ids, sent, arrive, copy, fate = (x[order] for x in
                                                      (kind, route, ids, sent, arrive, copy, fate))
        table = self._routes
        query_token, key_token = table.query_token(route), table.key_index[route]
        to_key = towards_key(kind)
        value = np.full(len(route), np.nan)
        for payload_kind, per_route in payloads.items():
            mine = kind == payload_kind
            value[mine] = per_route[route[mine]]
        rescaled = np.full(len(route), np.nan)
        if rescale is not None:
            mine = kind == Kind.VALUE
            rescaled[mine] = rescale[route[mine]]
        self._columns = {
            "kind": kind, "src": np.where(to_key, query_token, key_token),
            "dst": np.where(to_key, key_token, query_token), "group": table.group(route),
            "sent": sent, "arrive": arrive,
            "nbytes": np.array([self.nbytes_of.get(Kind(k), 0) for k in range(len(Kind))])[kind],
            "value": value, "id": ids, "route": route,
            "attempt": ids // (len(Kind) * max(len(table), 1)), "copy": copy, "fate": fate,
            "rescale": rescaled,
        }
        self._parts = []

    def __len__(self) -> int:
        """Transmissions logged: retries, network duplicates and messages that never left
        a crashed sender included (a full trace's rows)."""
        return int(sum(fates.sum() for fates in self.fates.values()))

    def __getattr__(self, name: str) -> np.ndarray:
        columns = self.__dict__.get("_columns")
        if columns is not None and name in columns:
            return columns[name]
        if name in COLUMNS:
            raise SummaryTraceError(f"this run kept a {self.detail} trace, which has no "
                                    f"per-message column {name!r}; simulate with "
                                    "trace='full' to keep one")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getitem__(self, index: int) -> Message:
        """Transmission ``index`` in trace order, as a :class:`Message`."""
        count = len(self._require_full("trace[i]").kind)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InvalidArgumentError(f"a trace is indexed by an integer, got {index!r}")
        if not -count <= index < count:
            raise IndexError(f"message {index} is out of range: the trace holds {count}")
        return next(self._messages(slice(int(index) % count, int(index) % count + 1)))

    def __iter__(self) -> Iterator[Message]:
        return self.rows()

    def __repr__(self) -> str:
        kinds = ", ".join(f"{kind.name} {int(self.fates[kind].sum()):,}" for kind in self.kinds)
        return f"<Trace {self.detail}: {len(self):,} transmissions ({kinds})>"

    @property
    def bytes(self) -> dict[Kind, int]:
        """Total payload bytes put on the wire, per message kind."""
        return {kind: self.counts[kind] * self.nbytes_of[kind] for kind in self.kinds}

    def latency_percentiles(self, kind: Kind, quantiles: Sequence[float] = (50, 90, 99)
                            ) -> dict[str, float]:
        """Delivery latency percentiles of one kind: exact with a full trace, else from the
        histogram (bin upper edges, 50 bins per decade: within 5%)."""
        if self.full:
            mine = (self.kind == kind) & (self.fate == Fate.DELIVERED)
            latency = self.arrive[mine] - self.sent[mine]
            if not latency.size:
                return {}
            return {f"p{q}": float(np.percentile(latency, q, method="inverted_cdf"))
                    for q in quantiles} | {"max": float(latency.max())}
        counts = self.latency_histogram[kind]
        filled = np.flatnonzero(counts)
        if not filled.size:
            return {}
        cumulative = np.cumsum(counts) / counts.sum()
        edges = LATENCY_BINS[1:]
        return {f"p{q}": float(edges[np.searchsorted(cumulative, q / 100)]) for q in quantiles} \
            | {"max": float(edges[filled[-1]])}

    def to_perfetto(self, path: str | os.PathLike[str]) -> Path:
        """Write Chrome trace event JSON for Perfetto UI / chrome://tracing (see
        :mod:`routing_sim.trace.exports`). Returns the path."""
        return exports.to_perfetto(self._require_full("to_perfetto"), path)

    def to_mermaid(self, query: int | None = None, group: int = 0, fenced: bool = False
                   ) -> str:
        """A Mermaid ``sequenceDiagram``: every message of ``group`` (flat batch/head
        index), or those of one ``query`` token; ``fenced`` wraps it in a Markdown
        ```` ```mermaid ```` fence. Lost, duplicated and retried messages are marked."""
        self._require_full("to_mermaid")
        routes = self._routes
        _check_index("group", group, routes.n_groups, "routing group (flat batch/head index)")
        if query is not None:
            _check_index("query", query, routes.n_queries, "query token")
        return exports.to_mermaid(self, None if query is None else int(query), int(group),
                                  bool(fenced))

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per transmission. Returns the path."""
        return exports.to_jsonl(self._require_full("to_jsonl"), path)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one CSV row per transmission (pandas: ``read_csv``). Returns the path."""
        return exports.to_csv(self._require_full("to_csv"), path)

    def to_pandas(self) -> pandas.DataFrame:
        """The full trace as a ``pandas.DataFrame``, one row per transmission, with
        ``kind`` and ``fate`` as named categories (needs pandas)."""
        try:
            import pandas
        except ImportError:
            raise InvalidArgumentError("to_pandas needs pandas: pip install pandas") from None
        columns = self._require_full("to_pandas")._columns
        assert columns is not None                                     # a full trace's
        frame = pandas.DataFrame({name: columns[name] for name in Message._fields})
        frame["kind"] = pandas.Categorical.from_codes(frame["kind"],
                                                      [kind.name for kind in Kind])
        frame["fate"] = pandas.Categorical.from_codes(frame["fate"], [fate.label for fate in Fate])
        return frame

    def _require_full(self, what: str) -> Trace:
        if not self.full:
            raise SummaryTraceError(f"{what} needs a full trace; this run kept a "
                                    f"{self.detail} one: simulate with trace='full'")
        return self

    def rows(self) -> Iterator[Message]:
        """One :class:`Message` per transmission, in trace order."""
        return self._messages(slice(None))

    def _messages(self, span: slice) -> Iterator[Message]:
        full = self._require_full("the message records")._columns
        assert full is not None                                        # a full trace's
        columns = [full[name][span].tolist() for name in Message._fields]
        for (ident, kind, src, dst, group, sent, arrive, nbytes, value, attempt, copy, fate,
             rescale) in zip(*columns):
            yield Message(ident, Kind(kind).name, src, dst, group, sent,
                          None if arrive != arrive else arrive, nbytes,
                          None if value != value else value, attempt, copy, Fate(fate).label,
                          None if rescale != rescale else rescale)


_BIN_EDGES = LATENCY_BINS.tolist()


def _bin_of(latency: float) -> int:
    """The histogram bin of one latency: ``bisect`` on the bin edges, clipped to the
    first and last bin (what ``np.searchsorted(LATENCY_BINS, latency, side="right") - 1``
    gives, clipped)."""
    return min(max(bisect.bisect_right(_BIN_EDGES, latency) - 1, 0), len(_BIN_EDGES) - 2)


# Latencies binned at a time: a 512 KB scratch array, which stays in a core's cache.
_LATENCY_CHUNK = 2**16
# Up to this many bin edges inside the latencies' span, counting the latencies at or above
# each edge (one vectorised comparison a pass) beats a binary search per latency.
_COUNTING_PASSES = 64


def _latency_counts(latency: np.ndarray) -> np.ndarray:
    """``(bins,)``: how many of ``latency`` fall in each histogram bin (a latency's bin is
    :func:`_bin_of`'s).

    Latencies usually span a few bins of the 601 (jitter 0.5 over latency 1: nine), so only
    the edges inside ``[min, max]`` are looked at: one count of the latencies at or above
    each, or a binary search among them when they are many (a NaN, never delivered, takes
    the last bin, as ``searchsorted`` sorts it).

    Examples
    --------
    >>> counts = _latency_counts(np.array([1.0, 1.05, 1.5, 0.0]))
    >>> {int(b): int(counts[b]) for b in np.flatnonzero(counts)}
    {0: 1, 301: 1, 302: 1, 309: 1}
    """
    low, high = float(latency.min()), float(latency.max())
    first, last = (_bin_of(low), _bin_of(high)) if low <= high else (0, len(_BIN_EDGES) - 2)
    inner = LATENCY_BINS[first + 1:last + 1]                           # (last - first,)
    counts = np.zeros(len(LATENCY_BINS) - 1, np.int64)                 # (bins,)
    if len(inner) <= _COUNTING_PASSES:
        at_least = np.zeros(len(inner) + 2, np.int64)                  # (edges + 2,)
        at_least[0] = len(latency)
        at_least[1:-1] = [np.count_nonzero(latency >= edge) for edge in inner]
        counts[first:last + 1] = at_least[:-1] - at_least[1:]
    else:
        counts[first:last + 1] = np.bincount(np.searchsorted(inner, latency, side="right"),
                                             minlength=last - first + 1)
    return counts


def _check_index(name: str, index, count: int, what: str) -> None:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or \
            not 0 <= index < count:
        raise InvalidArgumentError(f"{name} must be a {what} in 0 .. {count - 1}, got {index!r}")
