"""The fast engine: the routing protocol for whole batches of nodes, bit-identical under
every delivery schedule.

Read :mod:`.two_phase` first (the two-phase protocol's handlers), then :mod:`.barrier` (the
query node's arithmetic at its barrier). :mod:`.nodes` holds what every fast node shares
(requests retried like RPCs, receivers that answer each request once); :mod:`.online` is the
streaming softmax; :mod:`.backward` and :mod:`.backward_tiles` send the gradients back along
the forward routes.
"""

from __future__ import annotations
