"""The message log of a run: every message as a row of compact arrays, or just totals.

``detail="full"`` keeps one row per message (kind, source and destination token, group,
send and arrival time, bytes, and the scalar payload where there is one); ``"summary"``
keeps only counts and bytes per kind, so memory does not grow with the number of
messages; ``"auto"`` keeps full rows up to :data:`AUTO_FULL_LIMIT` messages.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import InvalidArgumentError
from .messages import Kind
from .routes import RouteTable
from .transport import Deliveries

__all__ = ["AUTO_FULL_LIMIT", "TRACE_DETAILS", "Trace"]

TRACE_DETAILS = ("auto", "full", "summary")
AUTO_FULL_LIMIT = 200_000
_COLUMNS = ("kind", "route", "id", "sent", "arrive")


class Trace:
    """Every message a run sent, in order of arrival (ties by message id).

    Columns (with ``detail="full"``) are numpy arrays of equal length: ``kind``,
    ``src``, ``dst`` (token positions in their own sequence), ``group`` (flat batch/head
    index), ``sent``, ``arrive``, ``nbytes``, ``value`` (the score of a SCORE, the share
    of a PULL, NaN for the vector payloads of QUERY and VALUE) and ``id``.
    """

    def __init__(self, detail: str, routes: RouteTable, nbytes: dict[Kind, int]) -> None:
        if detail not in ("full", "summary"):
            raise InvalidArgumentError(f"trace must be one of {TRACE_DETAILS}, got {detail!r}")
        self.detail = detail
        self.nbytes_of = nbytes
        self.counts = {kind: 0 for kind in Kind}
        self._routes = routes
        self._parts: list[tuple[Kind, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._columns: dict[str, np.ndarray] | None = None

    @property
    def full(self) -> bool:
        return self.detail == "full"

    def record(self, batch: Deliveries) -> None:
        """Log a batch of messages as they are sent."""
        self.counts[batch.kind] += len(batch)
        if self.full:
            self._parts.append((batch.kind, batch.routes, batch.ids, batch.sent, batch.arrive))

    def close(self, scores: np.ndarray, shares: np.ndarray) -> None:
        """Freeze the log; ``scores`` and ``shares`` (per route) fill the scalar payloads."""
        if not self.full:
            return
        parts = self._parts
        kind = np.concatenate([np.full(len(p[1]), p[0], dtype=np.uint8) for p in parts]
                              ) if parts else np.zeros(0, np.uint8)
        route, ids, sent, arrive = (np.concatenate([p[k] for p in parts]) if parts
                                    else np.zeros(0) for k in range(1, 5))
        route = route.astype(np.int64)
        order = np.lexsort((ids, arrive))
        kind, route, ids, sent, arrive = kind[order], route[order], ids[order], sent[order], \
            arrive[order]
        table = self._routes
        query_token, key_token = table.query_token(route), table.key_index[route]
        to_key = (kind == Kind.QUERY) | (kind == Kind.PULL)
        value = np.full(len(route), np.nan)
        value[kind == Kind.SCORE] = scores[route[kind == Kind.SCORE]]
        value[kind == Kind.PULL] = shares[route[kind == Kind.PULL]]
        self._columns = {
            "kind": kind, "src": np.where(to_key, query_token, key_token),
            "dst": np.where(to_key, key_token, query_token), "group": table.group(route),
            "sent": sent, "arrive": arrive,
            "nbytes": np.array([self.nbytes_of[Kind(k)] for k in range(len(Kind))])[kind],
            "value": value, "id": ids, "route": route,
        }
        self._parts = []

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __getattr__(self, name: str) -> np.ndarray:
        columns = self.__dict__.get("_columns")
        if columns is not None and name in columns:
            return columns[name]
        if name in ("kind", "src", "dst", "group", "sent", "arrive", "nbytes", "value", "id",
                    "route"):
            raise InvalidArgumentError(f"this run kept a {self.detail} trace, which has no "
                                       f"per-message column {name!r}; simulate with "
                                       "trace='full' to keep one")
        raise AttributeError(name)

    @property
    def bytes(self) -> dict[Kind, int]:
        """Total payload bytes per message kind."""
        return {kind: self.counts[kind] * self.nbytes_of[kind] for kind in Kind}

    def rows(self) -> Iterator[dict[str, object]]:
        """One dict per message, in trace order (for printing and exports)."""
        for index in range(len(self.kind)):
            yield {
                "id": int(self.id[index]), "kind": Kind(int(self.kind[index])).name,
                "src": int(self.src[index]), "dst": int(self.dst[index]),
                "group": int(self.group[index]), "sent": float(self.sent[index]),
                "arrive": float(self.arrive[index]), "bytes": int(self.nbytes[index]),
                "value": None if np.isnan(self.value[index]) else float(self.value[index]),
            }
