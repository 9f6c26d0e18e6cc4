"""Batches of messages in flight, and of retry timers, as arrays (one row per message)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .messages import Kind, message_ids
from .wave_times import constant

__all__ = ["Deliveries", "Timers", "concat", "merge"]


@dataclass
class Deliveries:
    """Messages of one kind, sorted by arrival time, then message id, then copy.

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
        return message_ids(self.kind, self.routes, self.attempts, self.n_routes)

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
        ids = self.ids
        same = times[1:] == times[:-1]
        ahead = (ids[1:] > ids[:-1]) | ((ids[1:] == ids[:-1])
                                        & (self.copies[1:] > self.copies[:-1]))
        return bool((later | (same & ahead)).all())

    def sorted(self) -> Deliveries:
        return self if self.in_order() else self.take(np.lexsort((self.copies, self.ids,
                                                                  self.arrive)))


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
