"""The four message kinds of the routing protocol and what each one carries.

For a route ``j -> i`` (query token ``i`` may pull from key token ``j``):

==========  =========  =====================================  ==================
kind        direction  payload                                bytes
==========  =========  =====================================  ==================
``QUERY``   i -> j     the query vector q_i (lookup need)     itemsize · E
``SCORE``   j -> i     the match score s_ij                   itemsize (x2 exact)
``PULL``    i -> j     the share w_ij that i wants            itemsize
``VALUE``   j -> i     the value vector v_j (payload)         itemsize · Ev
==========  =========  =====================================  ==================

The backward pass (:meth:`Run.backward <routing_sim.Run.backward>`) sends four more kinds
along the same routes, given the upstream gradient dO:

================  =========  ======================================  ==============
kind              direction  payload                                 bytes
================  =========  ======================================  ==============
``GRAD_OUTPUT``   i -> j     dO_i, to the value holder               itemsize · Ev
``GRAD_SHARE``    j -> i     dP_ij = dO_i · v_j                      itemsize
``GRAD_SCORE``    i -> j     dS_ij, after the softmax Jacobian at i  itemsize
``GRAD_KEY``      j -> i     scale · dS_ij · k_j (k_j stays at j)    itemsize · E
================  =========  ======================================  ==============

Sizes count the payload only (no headers), at the inputs' float width.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np

__all__ = ["BACKWARD", "FORWARD", "Fate", "Kind", "Message", "message_ids", "payload_bytes",
           "towards_key"]


class Kind(IntEnum):
    """A message kind; the integer is its place in the protocol."""

    QUERY = 0
    SCORE = 1
    PULL = 2
    VALUE = 3
    GRAD_OUTPUT = 4
    GRAD_SHARE = 5
    GRAD_SCORE = 6
    GRAD_KEY = 7

    @property
    def to_key(self) -> bool:
        """True if the message travels from the query token to the key token."""
        return self in (Kind.QUERY, Kind.PULL, Kind.GRAD_OUTPUT, Kind.GRAD_SCORE)


class Fate(IntEnum):
    """What became of a transmission (the trace's ``fate`` column).

    Examples
    --------
    >>> Fate.SENDER_DOWN.label
    'sender down'
    """

    DELIVERED = 0
    LOST = 1
    SENDER_DOWN = 2
    RECEIVER_DOWN = 3

    @property
    def label(self) -> str:
        """The fate as the trace exports spell it."""
        return self.name.lower().replace("_", " ")


FORWARD = (Kind.QUERY, Kind.SCORE, Kind.PULL, Kind.VALUE)
BACKWARD = (Kind.GRAD_OUTPUT, Kind.GRAD_SHARE, Kind.GRAD_SCORE, Kind.GRAD_KEY)
_TOWARDS_KEY = np.array([kind.to_key for kind in Kind])                # (len(Kind),)


def towards_key(kinds: np.ndarray) -> np.ndarray:
    """Per message, given its kind code: True if it travels from the query token to the key
    token (each kind's :attr:`Kind.to_key`, for whole columns at once).

    Examples
    --------
    >>> towards_key(np.array([Kind.QUERY, Kind.SCORE, Kind.GRAD_OUTPUT, Kind.GRAD_KEY])).tolist()
    [True, False, True, False]
    """
    return _TOWARDS_KEY[np.asarray(kinds, dtype=np.intp)]


def message_ids(kind: Kind, routes: np.ndarray, attempts: np.ndarray | None = None,
                n_routes: int = 1) -> np.ndarray:
    """Id of each transmission: ``(attempt · R + route) · len(Kind) + kind``.

    Unique per transmission of a run with ``R = n_routes`` routes; a first attempt's id is
    ``8 · route + kind``. Every random draw of the network is keyed by it.

    Examples
    --------
    >>> message_ids(Kind.PULL, np.array([0, 5])).tolist()
    [2, 42]
    """
    first = routes if attempts is None else routes.astype(np.int64) + attempts * n_routes
    ids = np.multiply(first, len(Kind), dtype=np.int64)                # (m,) a new array
    ids += int(kind)
    return ids


def payload_bytes(kind: Kind, itemsize: int, dim: int, value_dim: int,
                  score_floats: int = 1) -> int:
    """Size in bytes of one message of ``kind`` (exact mode sends a score as 2 floats).

    Examples
    --------
    >>> payload_bytes(Kind.QUERY, 8, 64, 32), payload_bytes(Kind.SCORE, 8, 64, 32)
    (512, 8)
    """
    floats = {Kind.QUERY: dim, Kind.SCORE: score_floats, Kind.PULL: 1, Kind.VALUE: value_dim,
              Kind.GRAD_OUTPUT: value_dim, Kind.GRAD_SHARE: 1, Kind.GRAD_SCORE: 1,
              Kind.GRAD_KEY: dim}[kind]
    return itemsize * floats


class Message(NamedTuple):
    """One transmission of a full trace, as ``trace[i]`` and the exports show it.

    ``kind`` and ``fate`` are names (``"QUERY"``, ``"lost"``); ``arrive``, ``value`` and
    ``rescale`` are None where the trace column holds NaN (never arrived, a vector payload
    or a PULL of online softmax, not a VALUE of online softmax).
    """

    id: int
    kind: str
    src: int
    dst: int
    group: int
    sent: float
    arrive: float | None
    nbytes: int
    value: float | None
    attempt: int
    copy: int
    fate: str
    rescale: float | None
