"""Batches of messages in flight, and of retry timers, as arrays (one row per message)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .messages import Kind, message_ids
from .wave_times import constant

__all__ = ["Deliveries", "Timers", "arrival_order", "concat", "merge"]


@dataclass
class Deliveries:
    """Messages of one kind, sorted by arrival time, then message id, then copy (or in
    the order they were sent, where the transport may hand them over in any order:
    :meth:`~routing_sim.network.transport.Outbox.any_order`).

    A message id (:func:`~routing_sim.network.messages.message_ids`) is derived on demand.
    ``attempts`` None means every message is a first attempt, ``copy`` None that none is a
    network duplicate.
    """

    kind: Kind
    routes: np.ndarray                   # (m,) route ids
    sent: np.ndarray                     # (m,) send times (maybe a zero-stride view)
    arrive: np.ndarray                   # (m,) arrival times
    attempts: np.ndarray | None = None   # (m,) retry number of each transmission
    copy: np.ndarray | None = None       # (m,) 1 for a network duplicate
    received: bool = True                # False: the receiver's NIC is still to come
    n_routes: int = 1

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def attempt(self) -> np.ndarray:
        return np.zeros(len(self), np.int64) if self.attempts is None else self.attempts

    @property
    def ids(self) -> np.ndarray:
        return self.ids_of(slice(None))

    def ids_of(self, part: slice) -> np.ndarray:
        """The message ids of the messages in ``part`` (a slice: no copy of the rest)."""
        attempts = None if self.attempts is None else self.attempts[part]
        return message_ids(self.kind, self.routes[part], attempts, self.n_routes)

    @property
    def copies(self) -> np.ndarray:
        return np.zeros(len(self), np.int8) if self.copy is None else self.copy

    def take(self, index: slice | np.ndarray) -> Deliveries:
        def pick(column: np.ndarray | None) -> np.ndarray | None:
            return None if column is None else column[index]

        return Deliveries(self.kind, self.routes[index], self.sent[index], self.arrive[index],
                          pick(self.attempts), pick(self.copy), self.received, self.n_routes)

    def in_order(self) -> bool:
        """Already sorted by (arrival, id, copy)? Cheaper to check than to sort."""
        if len(self) < 2:
            return True
        if constant(self.arrive) is not None and self.attempts is None and self.copy is None:
            return bool((self.routes[1:] > self.routes[:-1]).all())
        times = self.arrive
        later = times[1:] > times[:-1]
        if later.all():
            return True
        same = times[1:] == times[:-1]
        if not (later | same).all():                                   # one arrives earlier
            return False
        ids = self.ids
        ahead = (ids[1:] > ids[:-1]) | ((ids[1:] == ids[:-1])
                                        & (self.copies[1:] > self.copies[:-1]))
        return bool((later | (same & ahead)).all())

    def sorted(self) -> Deliveries:
        return self if self.in_order() else self.take(arrival_order(self.arrive, self.ids,
                                                                    self.copies))


def arrival_order(arrive: np.ndarray, ids: np.ndarray, copies: np.ndarray | None = None
                  ) -> np.ndarray:
    """The permutation that sorts messages by (arrival, id, copy): ``np.lexsort((copies,
    ids, arrive))``, in less time when few arrivals tie (as with jitter). ``copies`` None:
    no copies.

    One unstable sort by arrival decides every message whose time no other shares; only
    the runs of equal times are sorted again by id and copy. NaN times (never arrived)
    take the full sort.

    Examples
    --------
    >>> arrival_order(np.array([2.0, 1.0, 2.0, 0.5]), np.array([9, 8, 3, 1])).tolist()
    [3, 1, 2, 0]
    """
    order = np.argsort(arrive)                                         # (m,) ties unordered
    times = arrive[order]
    keys = (ids, arrive) if copies is None else (copies, ids, arrive)
    if len(times) and np.isnan(times[-1]):                             # NaN sorts last
        return np.lexsort(keys)
    tied = times[1:] == times[:-1]
    if not tied.any():
        return order
    in_run = np.zeros(len(order), dtype=bool)                          # shares its time
    in_run[1:] |= tied
    in_run[:-1] |= tied
    runs = order[in_run]                    # the runs, in time order, each unordered inside
    order[in_run] = runs[np.lexsort(tuple(key[runs] for key in keys))]
    return order


@dataclass
class Timers:
    """Retry timers of one request kind that are due: ``(route, attempt, time)``."""

    kind: Kind
    routes: np.ndarray
    attempts: np.ndarray
    due: np.ndarray


def concat(kind: Kind, parts: list[Deliveries]) -> Deliveries:
    """One batch of the parts' messages, in the parts' order (kinds may differ)."""
    if len(parts) == 1:
        part = parts[0]
        return Deliveries(kind, part.routes, part.sent, part.arrive, part.attempts, part.copy,
                          part.received, part.n_routes)
    attempts = None if all(p.attempts is None for p in parts) else \
        np.concatenate([p.attempt for p in parts])
    copy = None if all(p.copy is None for p in parts) else \
        np.concatenate([p.copies for p in parts])
    return Deliveries(kind, np.concatenate([p.routes for p in parts]),
                      np.concatenate([p.sent for p in parts]),
                      np.concatenate([p.arrive for p in parts]),
                      attempts, copy, parts[0].received, parts[0].n_routes)


def merge(kind: Kind, parts: list[Deliveries]) -> Deliveries:
    """One sorted batch of one kind from several sorted parts."""
    if len(parts) == 1:
        return parts[0]
    return concat(kind, parts).sorted()
