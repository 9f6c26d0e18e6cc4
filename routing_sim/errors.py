"""One exception hierarchy for everything routing_sim raises on purpose.

Every error a user can provoke is a :class:`RoutingSimError`. The subclasses also
derive from the built-in type that fits (``ValueError``, ``TypeError``), so code that
already catches those keeps working.
"""

from __future__ import annotations

__all__ = [
    "DeliveryError",
    "DTypeError",
    "EmptyRowError",
    "InvalidArgumentError",
    "MemoryBudgetError",
    "NumericalError",
    "RoutingSimError",
    "ShapeError",
    "SummaryTraceError",
]


class RoutingSimError(Exception):
    """Base class of every error raised by routing_sim."""


class InvalidArgumentError(RoutingSimError, ValueError):
    """An argument has a value the function cannot accept (NaN input, negative latency, ...)."""


class ShapeError(InvalidArgumentError):
    """Array shapes do not fit together (sequence lengths, feature dims, mask shapes)."""


class SummaryTraceError(InvalidArgumentError, AttributeError):
    """A per-message column or record was asked of a run that kept only a summary trace.

    Also an ``AttributeError``, so ``hasattr(run.trace, "kind")`` answers False.
    """


class DTypeError(RoutingSimError, TypeError):
    """An array has a dtype attention is not defined for (complex, bool, object, ...)."""


class EmptyRowError(RoutingSimError, ValueError):
    """A query token has no route to any key token and ``empty_rows="error"`` was asked for."""


class NumericalError(RoutingSimError, ArithmeticError):
    """A score left the float range (overflow to inf), so no finite answer exists."""


class DeliveryError(RoutingSimError, RuntimeError):
    """Messages the protocol needed never arrived, so the run cannot give a whole answer."""


class MemoryBudgetError(RoutingSimError):
    """A run would need more memory than is available, so it was refused before allocating.

    Deliberately not a ``MemoryError``: nothing ran out, the estimate
    (:mod:`routing_sim.budget`) said the run would not fit. The message gives the
    estimate, the budget and the way out (``trace="summary"``, a sparse route set).
    """
