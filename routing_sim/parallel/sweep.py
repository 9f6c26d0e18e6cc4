"""Parameter sweeps: run a function over every point of a grid, here or on a cluster.

``executor=None`` runs the points one after another in this process; any object with a
``submit(function, **kwargs)`` method whose futures have ``result()`` spreads them: a
:mod:`concurrent.futures` executor, or a ``dask.distributed.Client`` connected to a
scheduler (the optional extra ``routing_sim[distributed]``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from ..errors import InvalidArgumentError

__all__ = ["grid_points", "sweep"]


def sweep(function: Callable[..., Mapping[str, Any]], grid: Mapping[str, Sequence], *,
          executor: Any = None, progress: bool | None = None) -> list[dict[str, Any]]:
    """Run ``function(**point)`` for every point of ``grid``; one record per point.

    Parameters
    ----------
    function : callable
        Takes the grid's names as keyword arguments and returns a dict (picklable, and
        importable by the workers, when an executor runs it elsewhere).
    grid : dict of str to list
        Parameter name -> values; the points are the Cartesian product, the first name
        varying slowest.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Where the points run; None: here, one after another.
    progress : bool, optional
        Draw a progress bar on stderr; by default only when stderr is a terminal.

    Returns
    -------
    list of dict
        In grid order: each point's parameters, updated with what ``function`` returned.

    Raises
    ------
    InvalidArgumentError
        An empty or malformed grid, an executor without ``submit``, or a function that
        does not return a dict.

    Examples
    --------
    >>> def area(width, height):
    ...     return {"area": width * height}
    >>> sweep(area, {"width": [1, 2], "height": [10, 20]})  # doctest: +NORMALIZE_WHITESPACE
    [{'width': 1, 'height': 10, 'area': 10}, {'width': 1, 'height': 20, 'area': 20},
     {'width': 2, 'height': 10, 'area': 20}, {'width': 2, 'height': 20, 'area': 40}]
    """
    if not callable(function):
        raise InvalidArgumentError(f"function must be callable, got {type(function).__name__}")
    points = grid_points(grid)
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise InvalidArgumentError(f"executor must have a submit() method (a concurrent.futures "
                                   f"executor or a dask.distributed.Client), got "
                                   f"{type(executor).__name__}")
    bar = _Progress(len(points), sys.stderr, sys.stderr.isatty() if progress is None
                    else progress)
    if executor is None:
        results = []
        for point in points:
            results.append(function(**point))
            bar.advance()
    else:
        futures = [executor.submit(function, **point) for point in points]
        results = []
        for future in futures:
            results.append(future.result())
            bar.advance()
    bar.close()
    records = []
    for point, result in zip(points, results):
        if not isinstance(result, Mapping):
            raise InvalidArgumentError(f"function must return a dict; at {point} it returned "
                                       f"{type(result).__name__}")
        records.append({**point, **result})
    return records


def grid_points(grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every point of a grid, the first name varying slowest.

    Examples
    --------
    >>> grid_points({"devices": [2, 4], "layout": ["zigzag"]})
    [{'devices': 2, 'layout': 'zigzag'}, {'devices': 4, 'layout': 'zigzag'}]
    """
    if not isinstance(grid, Mapping) or not grid:
        raise InvalidArgumentError(f"grid must be a non-empty dict of name -> list of values, "
                                   f"got {grid!r}")
    for name, values in grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidArgumentError(f"grid names must be Python identifiers, got {name!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise InvalidArgumentError(f"grid[{name!r}] must be a non-empty list of values, got "
                                       f"{values!r}")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


class _Progress:
    """A one-line progress bar, drawn only when asked (on a terminal by default)."""

    def __init__(self, total: int, stream: TextIO, shown: bool, width: int = 30) -> None:
        self.total, self.stream, self.shown, self.width, self.done = total, stream, shown, \
            width, 0
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.shown:
            return
        filled = self.width * self.done // self.total
        self.stream.write(f"\rsweep [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total}")
        self.stream.flush()
