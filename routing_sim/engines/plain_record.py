"""What turns the plain engine's messages into a :class:`~routing_sim.Run`.

:mod:`routing_sim.engines.plain` is the protocol a learner reads; this module holds its plumbing:
the record of what the nodes computed (the fast engine's
:class:`~routing_sim.engines.state.ForwardState`, so the Run, its routing tables and the backward
pass are the same), the wire's log written as a :class:`~routing_sim.Trace`, exact mode's
arithmetic at one query node (with its whole-row fallback in integers), and the check of
what only the fast engine simulates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError
from ..network.conditions import Network
from ..network.deliveries import Deliveries
from ..network.messages import FORWARD
from ..numerics.exact import exact_lse, exact_pull, exact_shares, exact_unnormalised
from ..numerics.exact_row import exact_row, exact_row_lse
from ..numerics.kernels import with_sink
from ..routes.problem import Problem
from ..routes.table import RouteTable
from ..trace.log import Trace
from .state import ForwardState

if TYPE_CHECKING:
    from .plain import Message, Pull, Score, Value

__all__ = ["ExactNode", "check_plain", "note_barrier", "note_output", "record_log"]


class ExactNode:
    """Exact mode at query token ``i`` of group ``group``: at the barrier it keeps
    e = exp(s - max) and l = Σ e for the pull; a row the double-doubles cannot decide is
    done in integers from the keys its key nodes hold."""

    def __init__(self, problem: Problem, group: int, i: int, routes: list[tuple[int, int]]
                 ) -> None:
        self.problem, self.group, self.i, self.routes = problem, group, i, routes
        self.sink = None if problem.sinks is None else float(problem.sinks[group])

    def allocate(self, shares: np.ndarray, high: np.ndarray, low: np.ndarray,
                 chosen: np.ndarray, scores: list[Score], lse: np.ndarray) -> np.ndarray | None:
        """The shares of the chosen routes, into ``shares``, and their log-sum-exp, into
        ``lse`` (1,); returns the sink's share."""
        high, low = high[chosen], low[chosen]
        if self.sink is not None:               # the sink: one more route, no value
            high, low = with_sink(high, low, self.sink)
        e_high, e_low, l_high, l_low = exact_unnormalised(high, low)
        self.total = (l_high, l_low)
        self.chosen, self.top = chosen, high.max()
        every = exact_shares(e_high, e_low, l_high, l_low, self.top)
        if np.isnan(every).any():               # undecided: the row in integers
            every = self.exact_row()[0]
        shares[chosen] = every[:int(chosen.sum())]
        lse[:] = exact_lse(high, low, l_high, l_low)
        if np.isnan(lse).any():                 # undecided: the row in integers
            lse[:] = exact_row_lse(*self.row_inputs()[:4], self.sink)
        self.exp = dict(zip([s.route for s, pick in zip(scores, chosen) if pick],
                            zip(e_high, e_low)))
        return None if self.sink is None else every[-1]

    def pull(self, pulled: list[int], pulls: dict[int, Pull], values: np.ndarray,
             dropout_scale: float) -> np.ndarray:
        """Σ e_ij v_j over the routes pulled, exactly, with one division by l."""
        exp = np.array([self.exp[route] for route in pulled]).reshape(len(pulled), 2)
        output = exact_pull(exp[:, 0], exp[:, 1], *self.total, values, self.top)
        if np.isnan(output).any():              # undecided: the row in integers
            taken = [route in pulls for (route, _), pick in zip(self.routes, self.chosen)
                     if pick]
            exact = self.exact_row(np.array(taken, dtype=bool))[1]
            assert exact is not None, "exact_row gives the output over the pulled routes"
            output = exact.astype(values.dtype)
        if self.problem.keep is not None:
            output = output * dropout_scale
        return output

    def exact_row(self, pulled: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """Shares over my chosen routes (and the output over ``pulled``) in integers
        (:func:`~routing_sim.numerics.exact_row.exact_row`)."""
        keys, query, scale, bias, chosen = self.row_inputs()
        values = None if pulled is None else self.problem.value[self.group, chosen]
        return exact_row(keys, query, scale, bias, values, pulled, self.sink)

    def row_inputs(self) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None,
                                  np.ndarray]:
        """``(keys, query, scale, bias, key indices)`` of my chosen routes."""
        problem = self.problem
        chosen = np.array([j for (_, j), pick in zip(self.routes, self.chosen) if pick])
        bias = None if problem.bias is None else problem.bias[self.group, self.i, chosen]
        return (problem.key[self.group, chosen], problem.query[self.group, self.i],
                problem.scale, bias, chosen)


def note_barrier(state: ForwardState, table: RouteTable, scores: list[Score],
                 shares: np.ndarray, chosen: np.ndarray, now: float, lse: float,
                 sink_share: float | np.ndarray | None = None) -> None:
    """Record a query node's scores, shares and log-sum-exp (and its sink's share), for
    the Run."""
    routes = [score.route for score in scores]
    node = table.query_node[routes[0]]
    state.scores[routes] = [score.score for score in scores]
    if state.exact is not None:
        state.exact.score_low[routes] = [score.low for score in scores]
    state.shares[routes] = shares
    if state.chosen is not None:
        state.chosen[routes] = chosen
    if state.sink_shares is not None:
        state.sink_shares[node] = sink_share
    state.lse[node] = lse
    state.barrier_time[node] = now


def note_output(state: ForwardState, table: RouteTable, group: int, i: int,
                values: Iterable[Value], output: np.ndarray, done: float) -> None:
    """Record a query node's output and when its values came, for the Run."""
    values = list(values)
    state.record_values(np.array([value.route for value in values], dtype=np.int64),
                        np.array([value.arrive for value in values], dtype=np.float64))
    node = group * table.n_queries + i
    state.output[node], state.done_time[node] = output, done


def record_log(log: Trace, messages: list[Message], table: RouteTable) -> None:
    """The wire's log into ``log``, one batch per kind."""
    for kind in FORWARD:
        sent = [message for message in messages if message.KIND == kind]
        if sent:
            log.record(Deliveries(kind, np.array([m.route for m in sent]),
                                  np.array([m.sent for m in sent]),
                                  np.array([m.arrive for m in sent]),
                                  n_routes=len(table)), None)


def check_plain(network: Network, problem: Problem) -> None:
    """Refuse, naming the argument, what only the fast engine simulates (online softmax is
    refused earlier, by :class:`~routing_sim.EngineOptions`)."""
    refused = [("a lossy network (loss, crashes)", network.faulty),
               ("duplicate > 0", network.duplicate > 0),
               ("contention=True", network.contention),
               ("a sparse route set (a RouteSet graph, mask_mod, window_size or cu_seqlens)",
                problem.sparse is not None),
               ("score_mod", problem.score_mod is not None)]
    for what, asked in refused:
        if asked:
            raise InvalidArgumentError(f"engine='plain' runs the two-phase protocol on a "
                                       f"reliable network; {what} needs engine='fast'")
