"""The token nodes: what each node does when a message arrives, in two engines.

Read in this order:

1. :mod:`.plain` (``engine="plain"``): the routing protocol as a learner reads it, one
   SimPy process per token node, payloads in the messages. Its bookkeeping for the
   :class:`~routing_sim.Run` (the record, the trace, exact mode) is in
   :mod:`.plain_record`, not needed to follow the protocol.
2. :mod:`.fast.two_phase` (``engine="fast"``, the default): the same protocol with route
   ids for payloads, each kind of message handled for a whole batch of nodes at once.
3. :mod:`.fast.barrier`: what a query node computes at its barrier (scores, the softmax
   budget, the weighted pull), for one node and for many.

Then :mod:`.fast.online` (streaming softmax, no barrier), :mod:`.fast.nodes` (requests
retried like RPCs: the base of every fast node) and :mod:`.fast.backward` (the backward pass
along the same routes). :mod:`.state` is what the nodes of a forward run know (both
engines write it; the backward pass and the replay read it); :mod:`.memory` refuses a run
that would not fit before allocating it, and :mod:`.pages` asks for ordinary memory pages.
"""

from __future__ import annotations
