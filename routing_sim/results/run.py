"""The result of a simulation: outputs, routing tables, the message trace and statistics.

After :class:`Run`: what it hands back about its routes, a token's routing table
(:class:`RoutingTable`, one :class:`Route` a line), the routes that never answered
(:class:`DroppedRoute`) and every route's share (:class:`RouteWeights`).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ..engines.pages import small_pages
from ..engines.state import ForwardState
from ..errors import InvalidArgumentError
from ..network.conditions import Network
from ..routes.restrictions import DENSE_LIMIT
from ..routes.table import RouteTable
from ..trace.log import Trace
from ..trace.stats import Gradients, Stats
from ..views.time_format import format_time

__all__ = ["DroppedRoute", "Route", "RouteWeights", "RoutingTable", "Run", "WEIGHTS_LIMIT",
           "display_width", "pad"]


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: two for wide and full-width characters (Chinese,
    Japanese, Korean), none for combining marks, one for the rest.

    Examples
    --------
    >>> display_width("cat"), display_width("喝茶"), display_width("e\u0301")
    (3, 4, 1)
    """
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces on the right to ``width`` terminal columns (an f-string's
    ``:<width`` counts characters, so wide labels would push their column out of line).

    Examples
    --------
    >>> [pad(word, 5) + "|" for word in ("tea", "喝茶")]
    ['tea  |', '喝茶 |']
    """
    return text + " " * (width - display_width(text))


WEIGHTS_LIMIT = DENSE_LIMIT    # largest G·L·S a Run builds as the dense ``weights`` (256 MB)


@dataclass(repr=False)
class Run:
    """What :func:`~routing_sim.simulate` returns.

    Attributes
    ----------
    output : ndarray, shape (..., L, Ev)
        What every query token pulled: the attention output.
    weights : ndarray, shape (..., L, S)
        Row ``i`` is token ``i``'s routing table (shares, after dropout; with sinks, the
        real keys' shares, the sink's is in :meth:`routing_table`), built on first
        use; past :data:`WEIGHTS_LIMIT` entries asking for it raises an error that points
        to :meth:`route_weights`, which has the same shares per route at any size.
    trace : Trace
        The message log.
    stats : Stats
        Message counts, bytes, makespan and events.
    """

    output: np.ndarray
    trace: Trace
    stats: Stats
    _routes: RouteTable = field(repr=False)
    _scores: np.ndarray = field(repr=False)        # (R,) score of every route
    _arrived: np.ndarray = field(repr=False)       # (R,) VALUE arrival, NaN if none
    _completed: np.ndarray = field(repr=False)     # (G, L) when each output was complete
    _labels: tuple[list, list] = field(repr=False)
    _value_bytes: int = field(repr=False)
    _forward: tuple[ForwardState, Network, str] = field(repr=False)  # state, network, delivery
    dropped: list[DroppedRoute] = field(default_factory=list)
    _stream: list | None = field(default=None, repr=False)
    _positions: tuple[Sequence[int], Sequence[int]] | None = field(default=None, repr=False)
    _empty_nan: bool = field(default=False, repr=False)        # empty_rows="nan"
    _weights: np.ndarray | None = field(default=None, repr=False)

    @property
    def weights_shape(self) -> tuple[int, ...]:
        """``(..., L, S)``: the shape of :attr:`weights`, without building it."""
        return (*self.output.shape[:-1], self._routes.n_keys)

    @property
    def weights(self) -> np.ndarray:
        """The dense routing tables ``(..., L, S)`` the nodes pulled with: zero where there
        is no route, and after dropout (a dropped route 0, the kept shares scaled by
        ``1 / (1 - p)``, so a row need not sum to 1), as ``nn.MultiheadAttention`` returns
        them. :attr:`probabilities` has the tables before dropout."""
        if self._weights is None:
            self._weights = self._dense_weights(self.state.shares)
        return self._weights

    @property
    def probabilities(self) -> np.ndarray:
        """The dense routing tables before dropout ``(..., L, S)``: each query's softmax,
        a row summing to 1 (0 for a query with no route), and ``weights == probabilities
        * keep / (1 - dropout_p)``. Without dropout, :attr:`weights` itself.

        Examples
        --------
        >>> import numpy as np, routing_sim as rs
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 4, 2))
        >>> run = rs.simulate(q, k, v, dropout_p=0.5, seed=1)
        >>> run.probabilities.sum(axis=-1).round(12).tolist()
        [1.0, 1.0, 1.0, 1.0]
        >>> bool(np.allclose(run.weights, run.probabilities * (run.weights != 0) * 2))
        True
        """
        kept = self._forward[0].probabilities
        return self.weights if kept is None else self._dense_weights(kept)

    def require_dense(self, what: str = "run.weights", instead: str | None = None) -> None:
        """Raise a clear error if the dense ``(..., L, S)`` tables are over the limit; the
        message ends with ``instead`` (what to do), by default the per-route views."""
        table, shape = self._routes, self.weights_shape
        entries = table.n_groups * table.n_queries * table.n_keys
        if entries > WEIGHTS_LIMIT:
            raise InvalidArgumentError(
                f"{what} needs the dense routing tables {shape} ({entries:,} entries), over "
                f"the limit rs.run.WEIGHTS_LIMIT = {WEIGHTS_LIMIT:,}; " + (
                    instead or "run.route_weights() gives the shares per route, and "
                    "run.routing_table(i) one token's table"))

    def _dense_weights(self, shares: np.ndarray) -> np.ndarray:
        """Per-route ``shares`` (R,) as dense tables ``(..., L, S)``."""
        self.require_dense()
        table, shape = self._routes, self.weights_shape
        groups, n_queries, n_keys = table.n_groups, table.n_queries, table.n_keys
        if table.full:                                                 # every route exists
            weights = shares.reshape(groups, n_queries, n_keys)
        else:
            weights = np.zeros((groups * n_queries, n_keys), dtype=shares.dtype)
            weights[table.query_node, table.key_index] = shares        # (G·L, S)
            weights = weights.reshape(groups, n_queries, n_keys)
        if self._empty_nan:
            weights[table.empty_nodes(self._scores).reshape(groups, n_queries)] = np.nan
        return weights.reshape(shape)

    def route_weights(self) -> RouteWeights:
        """Every route's share with its (group, query, key) indices, in canonical order.

        Works at any size (memory grows with the routes, not with ``L · S``).

        Examples
        --------
        >>> import numpy as np, routing_sim as rs
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 3, 2))
        >>> run = rs.simulate(q, k, v, is_causal=True)
        >>> shares = run.route_weights()
        >>> shares.query.tolist(), shares.key.tolist()
        ([0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2])
        >>> bool(np.array_equal(run.weights[shares.query, shares.key], shares.share))
        True
        """
        table = self._routes
        nodes = table.query_node
        return RouteWeights(nodes // table.n_queries, nodes % table.n_queries,
                            table.key_index, self.state.shares)

    def __repr__(self) -> str:
        """One line: the shapes and the run's totals (``print(run.stats)`` has the rest)."""
        stats = self.stats
        return (f"<Run output {self.output.shape}, weights {self.weights_shape}: "
                f"{stats.routes:,} routes, {stats.total_messages:,} messages, "
                f"{stats.total_bytes:,} bytes, done at t={format_time(stats.makespan)}, "
                f"{self.trace.detail} trace>")

    def _token_positions(self) -> tuple[Sequence[int], Sequence[int]]:
        """Positions of the query and key tokens in their sequences (their rows by default)."""
        query_labels, key_labels = self._labels
        return self._positions or (range(len(query_labels)), range(len(key_labels)))

    def _row(self, token: int | str) -> int:
        """The query row of a token given by its position (an int) or its label (a str)."""
        query_labels = self._labels[0]
        positions = self._token_positions()[0]
        if isinstance(token, str):
            rows = [row for row, label in enumerate(query_labels) if label == token]
            if not rows:
                named = [label for label in query_labels if label is not None]
                raise InvalidArgumentError(f"no query token is labelled {token!r}; the labels "
                                           f"are {named}")
            if len(rows) > 1:
                raise InvalidArgumentError(f"label {token!r} names the query tokens at "
                                           f"positions {[positions[r] for r in rows]}; pass "
                                           "one position")
            return rows[0]
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or \
                token not in positions:
            positions = list(positions)
            where = f"0 .. {len(positions) - 1}" if positions == list(range(len(positions))) \
                else f"{positions}"
            raise InvalidArgumentError(f"i must be a query token position in {where} or a "
                                       f"token label, got {token!r}")
        return list(positions).index(int(token))

    @small_pages()
    def backward(self, d_output: ArrayLike, d_lse: ArrayLike | None = None) -> Gradients:
        """Gradients of ``sum(output * d_output)`` (plus ``sum(lse * d_lse)`` with
        ``d_lse``), sent back along the routes as messages.

        Returns :class:`~routing_sim.trace.stats.Gradients` with ``query``, ``key`` and
        ``value`` (the inputs' shapes), ``sinks`` (the sinks' shape; None without sinks:
        equal to :func:`~routing_sim.attention_backward`'s ``d_sinks``), and the backward
        pass's own ``stats`` and ``trace`` (see :mod:`routing_sim.engines.fast.backward` for
        the four message kinds). Covers masks, scale, dropout, heads, GQA, cross-attention,
        RoPE and hard routing; the arithmetic is float.
        Online-softmax runs allocate their shares as they stream, so their backward pass
        uses the final shares, like two-phase.

        ``d_lse`` (shape ``(..., L)``, :attr:`lse`'s) lets the loss read the log-sum-exp,
        as FlashAttention's backward takes a gradient for ``softmax_lse``: each query node
        adds ``w_ij · d_lse_i`` to the dS it sends (its shares before dropout, the sink in
        the denominator; no new message kind), equal to
        :func:`~routing_sim.attention_backward`'s ``d_lse`` within the float contract.
        A wrong shape raises :class:`~routing_sim.ShapeError` naming ``d_lse``.

        Examples
        --------
        >>> import numpy as np, routing_sim as rs
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 4, 2))
        >>> grads = rs.simulate(q, k, v, is_causal=True).backward(np.ones((4, 2)))
        >>> expected = rs.attention_backward(q, k, v, np.ones((4, 2)), is_causal=True)
        >>> all(np.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in
        ...     zip((grads.query, grads.key, grads.value), expected))
        True
        >>> grads.stats.messages
        {'GRAD_OUTPUT': 10, 'GRAD_SHARE': 10, 'GRAD_SCORE': 10, 'GRAD_KEY': 10}
        >>> d_lse = np.ones(4)                           # the loss reads run.lse too
        >>> grads = rs.simulate(q, k, v, is_causal=True).backward(np.ones((4, 2)), d_lse)
        >>> expected = rs.attention_backward(q, k, v, np.ones((4, 2)), is_causal=True,
        ...                                  d_lse=d_lse)
        >>> bool(np.allclose(grads.query, expected[0], rtol=1e-10, atol=1e-12))
        True
        """
        from ..engines.fast.backward import backward

        state, network, delivery = self._forward
        return replace(backward(state, d_output, network, delivery, self.trace.detail,
                                d_lse), _run=self)

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the offline replay page of this run: one self-contained HTML file.

        Token nodes with the messages moving between them in simulated time (play, pause,
        step, a time scrubber, messages in flight), each token's routing table on click, a
        head selector and a temperature / top-k what-if panel. No network request, no
        library: open it in any browser. Its DOM contract is in docs/en/watching.md.
        Returns the path.

        Examples
        --------
        >>> import numpy as np, routing_sim as rs, tempfile, pathlib
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 2, 4, 8))
        >>> page = rs.simulate(q, k, v).to_html(pathlib.Path(tempfile.mkdtemp()) / "run.html")
        >>> page.read_text(encoding="utf-8").count('data-role="routing-table"')
        1
        """
        from ..views.replay import write_html

        return write_html(self, path)

    def _repr_html_(self) -> str:
        from ..views.replay.notebook import run_html

        return run_html(self)

    @property
    def lse(self) -> np.ndarray:
        """Each query node's log-sum-exp ``(..., L)``: ``m + log l`` from the max ``m`` and
        normaliser ``l`` of its softmax (FlashAttention's ``softmax_lse``).

        Two-phase nodes compute it at their barrier from their own scores in source order,
        so it is bit-identical under every delivery schedule, and in exact mode correctly
        rounded, equal to ``attention(..., numerics="exact", return_lse=True)``'s. Online
        nodes take their streaming ``(m, l)``: its last bits may depend on arrival order,
        as the output's. With sinks it includes the sink's term; with dropout it is of the
        softmax before dropout; with hard routing, of the top-k routes the softmax ran
        over. A node with no route has ``-inf`` (its sink's logit with sinks).

        Examples
        --------
        >>> import numpy as np, routing_sim as rs
        >>> q, k, v = np.random.default_rng(0).normal(size=(3, 4, 2))
        >>> run = rs.simulate(q, k, v, is_causal=True)
        >>> scores = np.tril(q @ k.T / np.sqrt(2)) + np.triu(np.full((4, 4), -np.inf), 1)
        >>> bool(np.allclose(run.lse, np.log(np.exp(scores).sum(-1)), rtol=1e-13))
        True
        >>> exact = rs.simulate(q, k, v, is_causal=True, numerics="exact")
        >>> _, lse = rs.attention(q, k, v, is_causal=True, numerics="exact", return_lse=True)
        >>> bool(np.array_equal(exact.lse, lse))
        True
        """
        return self._forward[0].lse.reshape(self.output.shape[:-1]).copy()

    @property
    def state(self) -> ForwardState:
        """What the token nodes knew when the run ended: scores, shares, times per route.

        The backward pass and the replay page read it; see :mod:`routing_sim.engines.state`.
        """
        return self._forward[0]

    @property
    def completed(self) -> np.ndarray:
        """When each query token's output was complete, ``(G, L)`` over the routing groups
        (0 for a token with no route)."""
        return self._completed

    @property
    def labels(self) -> tuple[list, list]:
        """Token labels (query side, key side): ``labels=``, or the graph's ``label`` attributes.

        An unlabelled token's entry is None.
        """
        return self._labels

    @property
    def self_attention(self) -> bool:
        """True when each token asks and answers on one node (keys are the queries' tokens)."""
        return bool(self._routes.self_attention)

    def stream(self, i: int | str, head: int | None = None, batch: int | None = None
               ) -> list[tuple[float, np.ndarray]]:
        """Online softmax with a full trace: token ``i``'s partial output after each arrival.

        Returns ``(time, o / l)`` pairs in the order the node applied them; the last one is
        the output.
        """
        if self._stream is None:
            raise InvalidArgumentError("stream() needs softmax='online' and trace='full'")
        batch_shape, n_queries = self.weights_shape[:-2], self.weights_shape[-2]
        index = _group_index(batch_shape, head, batch)
        group = int(np.ravel_multi_index(index, batch_shape)) if batch_shape else 0
        node = group * n_queries + self._row(i)
        return [(time, partial) for time, u, partial in self._stream if u == node]

    def routing_table(self, i: int | str, head: int | None = None,
                      batch: int | None = None) -> RoutingTable:
        """Token ``i``'s routing table (for ``head`` of ``batch`` when inputs had those dims).

        ``i`` is the token's position or its label (``run.routing_table("cat")``). With 3-D
        inputs ``(H, L, E)`` the leading dim is addressed as ``head``; with 4-D inputs
        ``(N, H, L, E)`` use ``batch=n, head=h``. A :class:`~routing_sim.Decoder` step's
        query sits at its position in the sequence, ``step.position``.
        """
        batch_shape = self.weights_shape[:-2]
        n_queries = self.weights_shape[-2]
        i = self._row(i)
        query_positions, key_positions = self._token_positions()
        index = _group_index(batch_shape, head, batch)
        group = int(np.ravel_multi_index(index, batch_shape)) if batch_shape else 0
        node = group * n_queries + i
        span = slice(self._routes.indptr[node], self._routes.indptr[node + 1])
        keys = (np.arange(self._routes.n_keys) if self._routes.full
                else self._routes.key_index[span])                     # one CSR row
        query_labels, key_labels = self._labels
        routes = [Route(key_positions[j], key_labels[j], float(score), float(share),
                        self._value_bytes if not np.isnan(arrived) else 0, float(arrived))
                  for j, score, share, arrived in zip(keys.tolist(),
                                                      self._scores[span].tolist(),
                                                      self.state.shares[span].tolist(),
                                                      self._arrived[span].tolist())]
        routes.sort(key=lambda route: (-route.share, route.source))
        pulled = sum(1 for route in routes if route.bytes_pulled)
        where = "".join(f", {name} {value}" for name, value in
                        zip(("batch", "head")[-len(index):] if index else (), index))
        state = self.state
        sink = None if state.sink_shares is None else float(state.sink_shares[node])
        sink_logit = None if state.sinks is None else float(state.sinks[node])
        return RoutingTable(query_positions[i], query_labels[i], where, routes,
                            messages=2 * len(routes) + 2 * pulled,
                            completed=float(self._completed.reshape(-1, n_queries)[group, i]),
                            sink=sink, sink_logit=sink_logit, lse=float(state.lse[node]))


def _group_index(batch_shape: tuple[int, ...], head, batch) -> tuple[int, ...]:
    if not batch_shape:
        if head is not None or batch is not None:
            raise InvalidArgumentError("these inputs had no batch or head dims; call "
                                       "routing_table(i) without head= or batch=")
        return ()
    if len(batch_shape) == 1:
        given = [x for x in (head, batch) if x is not None]
        if len(given) != 1:
            raise InvalidArgumentError(f"inputs had one leading dim of size {batch_shape[0]}; "
                                       "pass head= (or batch=) to pick one")
        index = (given[0],)
    else:
        if head is None or batch is None:
            raise InvalidArgumentError(f"inputs had leading dims {batch_shape}; pass batch= "
                                       "(an int, or a tuple for several batch dims) and head=")
        index = (*(batch if isinstance(batch, tuple) else (batch,)), head)
    if len(index) != len(batch_shape) or any(
            isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= x < n
            for x, n in zip(index, batch_shape)):
        raise InvalidArgumentError(f"batch/head index {index} does not fit leading dims "
                                   f"{batch_shape}")
    return tuple(int(x) for x in index)


class RouteWeights(NamedTuple):
    """Every route's share, in canonical order (by group, query, then key): four ``(R,)``
    arrays. ``group`` is the flat batch/head index (``np.unravel_index(group,
    batch_shape)`` gives the leading dims back), ``query`` and ``key`` the token rows."""

    group: np.ndarray        # (R,) flat batch/head index
    query: np.ndarray        # (R,) query token row i
    key: np.ndarray          # (R,) key token row j
    share: np.ndarray        # (R,) w_ij after dropout (NaN rows: empty_rows="nan")


@dataclass(frozen=True)
class DroppedRoute:
    """A route whose answer never came (``on_missing="degrade"``)."""

    group: tuple[int, ...]   # batch/head index of the routing group
    query: int               # query token position
    key: int                 # key token position
    phase: str               # "score" (QUERY/SCORE lost) or "value" (PULL/VALUE lost)
    share: float             # the budget share it would have had


@dataclass(frozen=True)
class Route:
    """One line of a routing table: where a share of the budget goes."""

    source: int              # key token position
    label: str | None        # key token text, if the graph has labels
    score: float             # s_ij
    share: float             # w_ij, after dropout
    bytes_pulled: int        # VALUE payload bytes (0 if the route was dropped)
    arrived: float           # when the VALUE arrived (NaN if never pulled)

    @property
    def name(self) -> str:
        return self.label if self.label is not None else f"#{self.source}"


@dataclass(frozen=True, repr=False)
class RoutingTable:
    """Token ``token``'s routing table: its routes sorted by share, largest first.

    ``str(table)`` (and ``repr``, so a REPL shows it) prints one route a line, like
    ``token cat: 0.50 ( 50.0%)  position 1`` (``token #1: ...`` without labels), followed
    by the route's score, the bytes pulled and when the value arrived, and a footer
    (routes, messages, when the output was complete). With sinks, a ``sink:`` line shows
    the share of the budget the head's sink logit took (it pulls no value): the routes'
    shares and ``sink`` add up to 1. ``lse`` is the log-sum-exp of the scores the budget
    was split over (:attr:`Run.lse`), so a share before dropout is ``exp(score - lse)``.
    """

    token: int
    label: str | None
    where: str
    routes: list[Route]
    messages: int
    completed: float
    sink: float | None = None        # the sink's share of the budget (None: no sinks)
    sink_logit: float | None = None  # the head's sink logit
    lse: float = float("nan")        # log Σ exp(score) of the budget (run.lse)

    def __str__(self) -> str:
        who = f"token {self.label!r} (#{self.token})" if self.label else f"token #{self.token}"
        lines = [f"routing table of {who}{self.where}"]
        width = max((display_width(route.name) for route in self.routes), default=0) + 1
        for route in self.routes:
            pulled = (f"pulled {route.bytes_pulled} B at t={format_time(route.arrived)}"
                      if route.bytes_pulled else "not pulled")
            lines.append(f"  token {pad(route.name + ':', width)} {route.share:.2f} "
                         f"({100 * route.share:5.1f}%)  position {route.source:<3} "
                         f"score {route.score:+.3f}   {pulled}")
        if not self.routes:
            lines.append("  (no routes: this token cannot reach any key)")
        if self.sink is not None:
            lines.append(f"  {'sink:':<{width + 6}} {self.sink:.2f} ({100 * self.sink:5.1f}%)  "
                         f"logit {self.sink_logit:+.3f}   pulls no value (budget that goes "
                         "nowhere)")
        lines.append(f"  {len(self.routes)} routes, {self.messages} messages, "
                     f"output complete at t={format_time(self.completed)}")
        total = sum(route.share for route in self.routes) + (self.sink or 0.0)
        if self.routes and abs(total - 1) > 1e-9:
            lines.append(f"  shares sum to {100 * total:.1f}%: dropout scaled the kept routes "
                         "by 1/(1 - p), so each share is right in expectation")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from ..views.replay.notebook import table_html

        return table_html(self)
