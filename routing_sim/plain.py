"""The routing protocol as a learner reads it: one SimPy process per token node.

Read this module first. For every route ``j -> i`` (query token ``i`` may pull from key
token ``j``) of every group (batch element and head)::

    i --Query(q_i)-->  j      j matches it against its key: s_ij = q_i · k_j · scale + b_ij
    i <--Score(s_ij)-- j      i keeps it; once every score is in (the barrier) i splits
                              its budget, w_i· = softmax(s_i·), over its routes in source order
    i --Pull(w_ij)-->  j      i asks for the value, telling j its share
    i <--Value(v_j)--  j      once every value is in: o_i = Σ_j w_ij v_j, in source order

With sinks, i's budget also has a share for its head's sink logit: a route with no key
node, so no message, that takes its share and pulls no value (the shares over the keys
sum to less than 1).

Every token node is a SimPy process that waits on its inbox (a ``simpy.Store``) and hands
each message to ``on_query``, ``on_score``, ``on_pull`` or ``on_value``. Messages are
small dataclasses that carry their payloads. The :class:`Wire` stamps each message with
its arrival time, drawn from the same :class:`~routing_sim.Network` as the fast engine's
and keyed by the same message id (``8 · route + kind``), so both engines send the same
messages at the same times; a node's clock is the stamp of the message it handles.

The fast engine (:mod:`routing_sim.protocol`, the default) runs this protocol with route
ids instead of payloads and evaluates the scores, softmax and weighted sum in batches at
each query node's barrier: the same numbers, in one place and one order, which is what
makes it fast and bit-identical under every schedule. It also covers what this engine
refuses: lost, duplicated and crashed messages (retries), NIC contention, the online
softmax and sparse route sets.

What turns the nodes' results into a :class:`~routing_sim.Run` (the record the fast engine
keeps, the trace, exact mode's arithmetic and its fallback) is in
:mod:`routing_sim.plain_run`: not needed to follow the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import simpy

from .barrier import top_routes
from .errors import NumericalError
from .inputs import Problem
from .messages import Kind, message_ids
from .network import Network
from .numerics import Kernels, routing_budget, sink_budget, weighted_pull
from .plain_run import ExactNode, check_plain, note_barrier, note_output, record_log
from .routes import RouteTable
from .state import ForwardState
from .trace import Trace

__all__ = ["Message", "PlainEngine", "Pull", "Query", "Score", "TokenNode", "Value", "Wire",
           "check_plain"]


@dataclass
class Message:
    """A message on route ``route`` (``j -> i`` of group ``group``), stamped with its send
    and arrival time."""

    KIND: ClassVar[Kind]
    route: int
    group: int                                  # batch element and head
    i: int                                      # query token
    j: int                                      # key token
    sent: float
    arrive: float = np.nan


@dataclass
class Query(Message):
    KIND = Kind.QUERY
    query: np.ndarray | None = None             # q_i (E,)


@dataclass
class Score(Message):
    KIND = Kind.SCORE
    score: float = 0.0                          # s_ij
    low: float = 0.0                            # exact mode: what rounding s_ij left out


@dataclass
class Pull(Message):
    KIND = Kind.PULL
    share: float = 0.0                          # w_ij


@dataclass
class Value(Message):
    KIND = Kind.VALUE
    value: np.ndarray | None = None             # v_j (Ev,)


class Wire:
    """The network: a message sent at ``t`` arrives at ``t + delay`` in the receiver's inbox."""

    def __init__(self, env: simpy.Environment, network: Network, route_latency: np.ndarray,
                 nbytes: dict[Kind, int]) -> None:
        self.env, self.network, self.route_latency, self.nbytes = env, network, \
            route_latency, nbytes
        self.mode, self.events = "per_message", 0
        self.log: list[Message] = []

    def send(self, message: Message, to: TokenNode) -> None:
        ident = message_ids(message.KIND, np.array([message.route]))
        delay = self.network.delays(ident, self.route_latency[message.route],
                                    self.nbytes[message.KIND])
        message.arrive = message.sent + float(np.ravel(delay)[0])
        self.log.append(message)
        self.env.process(self.carry(message, to.inbox))

    def carry(self, message: Message, inbox: simpy.Store) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(max(message.arrive - self.env.now, 0.0))
        self.events += 1
        yield inbox.put(message)


class TokenNode:
    """Token node of group ``group``: it asks as query token ``i`` and answers as key token
    ``j`` (one token does both in self-attention; cross-attention has separate nodes)."""

    def __init__(self, engine: PlainEngine, group: int, i: int | None, j: int | None) -> None:
        self.engine, self.group, self.i, self.j = engine, group, i, j
        self.inbox = simpy.Store(engine.env)
        self.routes = engine.routes_of(group, i) if i is not None else []  # [(route, j)]
        self.scores: dict[int, Score] = {}      # by route, as they come
        self.pulls: dict[int, Pull] = {}        # by route: what I asked for
        self.values: dict[int, Value] = {}      # by route, as they come
        self.handlers: dict[Kind, Callable[[Any], None]] = {
            Kind.QUERY: self.on_query, Kind.SCORE: self.on_score,
            Kind.PULL: self.on_pull, Kind.VALUE: self.on_value}

    @property
    def query_token(self) -> int:
        """``i``: only a node that asks (has routes) allocates and aggregates."""
        assert self.i is not None
        return self.i

    def run(self) -> Generator[simpy.Event, Any, None]:
        """The node's process: handle each message as it arrives."""
        for route, j in self.routes:
            self.send(Query(route, self.group, self.query_token, j, 0.0,
                            query=self.engine.problem.query[self.group, self.query_token]))
        while True:
            message = yield self.inbox.get()
            self.handlers[message.KIND](message)

    def on_query(self, message: Query) -> None:
        """Key node j: match the query against my key and answer with the score."""
        problem = self.engine.problem
        bias = None if problem.bias is None else problem.bias[self.group, message.i, [message.j]]
        assert message.query is not None, "a Query message carries the query vector"
        with np.errstate(over="ignore", invalid="ignore"):
            high, low = self.engine.kernels.scores(problem.key[self.group, [message.j]],
                                                   message.query, problem.scale, bias)  # (1,)
        if not np.isfinite(high[0]):
            raise NumericalError(f"a score overflowed to {high[0]}; scale the inputs down")
        self.reply(message, Score, score=high[0], low=0.0 if low is None else low[0])

    def on_score(self, message: Score) -> None:
        """Query node i: keep the score; the last one passes the barrier."""
        self.scores[message.route] = message
        if len(self.scores) == len(self.routes):
            self.allocate(max(score.arrive for score in self.scores.values()))

    def on_pull(self, message: Pull) -> None:
        """Key node j: send my value to whoever pulls it."""
        self.reply(message, Value, value=self.engine.problem.value[self.group, self.j])

    def on_value(self, message: Value) -> None:
        """Query node i: keep the value; the last one completes the output."""
        self.values[message.route] = message
        if len(self.values) == len(self.pulls):
            self.aggregate(max(value.arrive for value in self.values.values()))

    def allocate(self, now: float) -> None:
        """The barrier: the budget over my scores in source order, then a PULL per share."""
        engine = self.engine
        scores = [self.scores[route] for route, _ in self.routes]      # source order
        high = np.array([score.score for score in scores])             # (routes,)
        low = np.array([score.low for score in scores])
        chosen = top_routes(high[None], engine.top_k)[0] if engine.top_k else \
            np.ones(len(high), dtype=bool)                             # hard routing
        shares = np.zeros(len(high), dtype=engine.problem.dtype)
        sinks = engine.problem.sinks
        sink_share: np.ndarray | None = None
        if engine.kernels.exact:                # keep e = exp(s - max) and l = Σ e
            self.exact = ExactNode(engine.problem, self.group, self.query_token, self.routes)
            sink_share = self.exact.allocate(shares, high, low, chosen, scores)
        elif sinks is None:
            shares[chosen] = routing_budget(high[chosen])
        else:                                   # the sink takes a share and pulls no value
            shares[chosen], sink_share = sink_budget(high[chosen], sinks[self.group])
        kept = chosen & engine.kept(self.group, self.query_token)      # dropout
        shares *= np.where(kept, engine.dropout_scale, 0).astype(shares.dtype)
        note_barrier(engine.state, engine.table, scores, shares, chosen, now, sink_share)
        for score, share, pull in zip(scores, shares, kept):
            if pull:
                self.pulls[score.route] = Pull(score.route, self.group, self.query_token, score.j,
                                               now + engine.processing, share=share)
                self.send(self.pulls[score.route])
        if not self.pulls:
            self.aggregate(now)

    def aggregate(self, now: float) -> None:
        """o_i = Σ_j w_ij v_j over the values I pulled, in source order."""
        engine, pulled = self.engine, [route for route, _ in self.routes if route in self.pulls]
        values = np.array([self.values[route].value for route in pulled]).reshape(
            len(pulled), engine.problem.shape[4])                      # (pulled, Ev)
        if engine.kernels.exact:                # Σ e_ij v_j exactly, one division by l
            output = self.exact.pull(pulled, self.pulls, values, engine.dropout_scale)
        else:
            output = weighted_pull(np.array([self.pulls[route].share for route in pulled],
                                            dtype=values.dtype), values)
        note_output(engine.state, engine.table, self.group, self.query_token,
                    self.values.values(), output, now + engine.processing)

    def reply(self, request: Message, kind: type[Message], **payload: Any) -> None:
        """Key node j answers a request ``processing`` after it arrived."""
        self.send(kind(request.route, self.group, request.i, request.j,
                       request.arrive + self.engine.processing, **payload))

    def send(self, message: Message) -> None:
        self.engine.wire.send(message, self.engine.receiver(message))


class PlainEngine:
    """The token nodes of one run, the wire between them, and what they computed.

    ``state`` (:class:`~routing_sim.state.ForwardState`, the fast engine's record) keeps
    the scores, shares, times and outputs, so the :class:`~routing_sim.Run` is the same.
    :func:`~routing_sim.simulate` builds it for ``engine="plain"``.

    Examples
    --------
    >>> import numpy as np, routing_sim as rs
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 4, 8))   # 2 heads, 4 tokens
    >>> net = rs.Network(latency=1.0, jitter=0.5, bandwidth=64.0, seed=7)
    >>> plain = rs.simulate(q, k, v, is_causal=True, network=net, engine="plain")
    >>> fast = rs.simulate(q, k, v, is_causal=True, network=net)
    >>> [np.array_equal(plain.trace.arrive, fast.trace.arrive), plain.stats.messages]
    [True, {'QUERY': 20, 'SCORE': 20, 'PULL': 20, 'VALUE': 20}]
    >>> float(np.abs(plain.output - rs.attention(q, k, v, is_causal=True)).max()) < 1e-12
    True
    >>> first = plain.trace[0]             # latency 1 + 64 bytes / 64 per unit + jitter
    >>> first.kind, first.src, first.dst, first.group, round(first.arrive, 3)
    ('QUERY', 0, 0, 1, 2.041)
    """

    def __init__(self, problem: Problem, table: RouteTable, network: Network,
                 route_latency: np.ndarray, nbytes: dict[Kind, int], kernels: Kernels,
                 top_k: int | None = None) -> None:
        self.problem, self.table, self.kernels, self.top_k = problem, table, kernels, top_k
        self.env = simpy.Environment()
        self.wire = Wire(self.env, network, route_latency, nbytes)
        self.processing = network.processing
        self.dropout_scale = problem.dtype.type(1.0 / (1.0 - problem.dropout_p))
        self.state = ForwardState(problem, table, kernels, np.zeros(len(table), np.int8),
                                  network.processing, top_k=top_k)
        self.retransmissions: dict[Kind, int] = {}
        self.ignored = 0
        groups, n_queries, n_keys = table.n_groups, table.n_queries, table.n_keys
        if table.self_attention:                 # token t asks and answers on one node
            self.query_nodes = self.key_nodes = {
                (g, t): TokenNode(self, g, t, t) for g in range(groups) for t in range(n_queries)}
            self.nodes = list(self.query_nodes.values())
        else:
            self.query_nodes = {(g, i): TokenNode(self, g, i, None) for g in range(groups)
                                for i in range(n_queries)}
            self.key_nodes = {(g, j): TokenNode(self, g, None, j) for g in range(groups)
                              for j in range(n_keys)}
            self.nodes = [*self.query_nodes.values(), *self.key_nodes.values()]

    def run(self, log: Trace) -> None:
        """Start every node, run the clock until no message is left, then fill ``log``."""
        for node in self.nodes:
            self.env.process(node.run())
        self.env.run()
        record_log(log, self.wire.log, self.table)

    def receiver(self, message: Message) -> TokenNode:
        """Requests (QUERY, PULL) go to the key token's node, answers to the query token's."""
        if message.KIND.to_key:
            return self.key_nodes[message.group, message.j]
        return self.query_nodes[message.group, message.i]

    def routes_of(self, group: int, i: int) -> list[tuple[int, int]]:
        """``(route, j)`` of every route of query token ``i``, in source order."""
        node = group * self.table.n_queries + i
        start, stop = self.table.indptr[node], self.table.indptr[node + 1]
        return list(zip(range(start, stop), self.table.key_index[start:stop].tolist()))

    def kept(self, group: int, i: int) -> np.ndarray:
        """Which of query token ``i``'s routes dropout keeps."""
        keys = [j for _, j in self.routes_of(group, i)]
        return np.ones(len(keys), bool) if self.problem.keep is None else \
            self.problem.keep[group, i, keys]
