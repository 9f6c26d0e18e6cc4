"""One exception hierarchy for everything routing_sim raises on purpose.

Every error a user can provoke is a :class:`RoutingSimError`. The subclasses also
derive from the built-in type that fits (``ValueError``, ``TypeError``), so code that
already catches those keeps working. A valid input that is almost certainly a mistake
gets a warning instead (:class:`MaskWarning`), pointed at the user's call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from types import FrameType

__all__ = [
    "DeliveryError",
    "DTypeError",
    "EmptyRowError",
    "InvalidArgumentError",
    "MaskWarning",
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


class MaskWarning(UserWarning):
    """A mask that is valid but almost certainly not what was meant (a 0/1 float mask).

    Silence it with ``warnings.filterwarnings("ignore", category=rs.MaskWarning)`` when
    the additive meaning is intended.
    """


_PACKAGE = str(Path(__file__).resolve().parent) + os.sep
_WRAPPERS = (contextlib.__file__,)             # a @contextmanager decorator's frames


def warn_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first frame outside routing_sim (and the
    decorators wrapping its entry points): the user's call."""
    frame: FrameType | None = sys._getframe(1)
    level = 2                                          # stacklevel 2: warn_caller's caller
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                 or frame.f_code.co_filename in _WRAPPERS):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
