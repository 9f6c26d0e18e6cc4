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

Sizes count the payload only (no headers), at the inputs' float width.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Kind", "payload_bytes"]


class Kind(IntEnum):
    """A message kind; the integer is its place in the protocol."""

    QUERY = 0
    SCORE = 1
    PULL = 2
    VALUE = 3

    @property
    def to_key(self) -> bool:
        """True if the message travels from the query token to the key token."""
        return self in (Kind.QUERY, Kind.PULL)


def payload_bytes(kind: Kind, itemsize: int, dim: int, value_dim: int,
                  score_floats: int = 1) -> int:
    """Size in bytes of one message of ``kind`` (exact mode sends a score as 2 floats).

    Examples
    --------
    >>> payload_bytes(Kind.QUERY, 8, 64, 32), payload_bytes(Kind.SCORE, 8, 64, 32)
    (512, 8)
    """
    floats = {Kind.QUERY: dim, Kind.SCORE: score_floats, Kind.PULL: 1,
              Kind.VALUE: value_dim}[kind]
    return itemsize * floats
