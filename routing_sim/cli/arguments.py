"""Argument types of the ``routing-sim`` command, and its size check before allocating.

argparse calls each type on the text given; a bad value becomes argparse's own one-line
``routing-sim: error: argument --seed: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse

from ..errors import InvalidArgumentError

__all__ = ["CLI_MEMORY_LIMIT", "check_size", "count", "non_negative", "positive", "probability",
           "seed"]

CLI_MEMORY_LIMIT = 2 * 2**30          # bytes a command-line run may allocate (estimated)


def check_size(heads: int, tokens: int, dim: int) -> None:
    """Refuse runs whose arrays would not fit, before allocating anything.

    Examples
    --------
    >>> check_size(1, 6, 4)
    >>> check_size(100_000, 6, 100_000)
    Traceback (most recent call last):
    ...
    routing_sim.errors.InvalidArgumentError: --heads 100000 × 6 tokens × --dim 100000 needs
    about 1.34e+03 GiB, over the command line's 2 GiB limit; use the Python API
    (routing_sim.simulate) for large runs
    """
    inputs = 3 * heads * tokens * dim * 8                  # q, k, v in float64
    tables = 16 * heads * tokens * tokens * 8              # per-route state and trace rows
    needed = inputs + tables
    if needed > CLI_MEMORY_LIMIT:
        raise InvalidArgumentError(f"--heads {heads} × {tokens} tokens × --dim {dim} needs "
                                   f"about "
                          f"{needed / 2**30:.3g} GiB, over the command line's "
                          f"{CLI_MEMORY_LIMIT / 2**30:.0f} GiB limit; use the Python API "
                          "(routing_sim.simulate) for large runs")


def seed(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy refuses negative seeds).

    Examples
    --------
    >>> seed("7")
    7
    """
    number = whole(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a seed >= 0, got {text!r}")
    return number


def count(text: str) -> int:
    """A whole number >= 0."""
    number = whole(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return number


def whole(text: str) -> int:
    """A whole number."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    number = real(text)
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return number


def probability(text: str) -> float:
    """A probability in [0, 1)."""
    number = real(text)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return number


def positive(text: str) -> int:
    """A whole number >= 1."""
    number = whole(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return number


def real(text: str) -> float:
    """A number."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None

