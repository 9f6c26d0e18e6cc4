"""The network between token nodes: messages, their timing and faults, their delivery.

:mod:`.conditions` describes a network (:class:`~routing_sim.Network`: latency, jitter,
bandwidth, loss, crashes) as pure functions of the message id; :mod:`.messages` the four
message kinds and their sizes; :mod:`.deliveries` batches of messages in flight as arrays,
with :mod:`.wave_times` for the times of a wave sent at one instant; :mod:`.timers` the
retransmission timers; :mod:`.transport` the delivery of batches on SimPy. Nothing here
knows about attention: the engines put their messages on it.
"""

from __future__ import annotations

from .conditions import Crash, Network
from .messages import Kind

__all__ = ["Crash", "Kind", "Network"]
