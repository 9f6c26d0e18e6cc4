"""Incremental decoding: tokens join the cluster one at a time (or a chunk at a time), with a
KV cache.

Each new token publishes its key and value into the registry (they stay on its node:
publishing costs no message), then queries every token before it and itself, with the
bottom-right causal alignment of a KV cache. That is one routing round of O(t) messages
per new token, instead of the O(t²) of recomputing the whole sequence.

A round is one :func:`~routing_sim.simulate` call over the ``T`` new tokens (queries) and
the ``t + T`` cached ones (keys), where ``t`` is the cache length before the round. Every
option that depends on a position sees the token's place in the whole sequence, so each
round computes exactly the rows ``t .. t+T-1`` of whole-sequence causal attention:

* ALiBi (``alibi_slopes``) and RoPE (``rope``) place query ``i`` of the round at
  ``t + i`` through the bottom-right alignment (on a FlashAttention-layout cache, RoPE
  comes as ``rotary_cos``/``rotary_sin`` tables read at each token's slot, and ALiBi
  slopes may differ per sequence); ``position_ids`` given to a round (as a
  model passes them, per batch element) place its tokens for RoPE instead, and the cache
  keeps every key's position for the rounds after;
* a ``window_size=(left, right)`` (FlashAttention's; aligned bottom-right, causal sets
  ``right = 0``) lets query ``t + i`` reach the keys ``t + i - left .. t + i``;
* ``mask_mod`` and ``score_mod`` receive ``q_idx = t + i`` (a score mod's derivative too,
  so ``step.run.backward`` stays right) and ``kv_idx`` = the key's position;
* a route-set ``graph`` (a pattern of :mod:`routing_sim.patterns`) over the whole
  sequence is read at its rows ``t .. t+T-1``;
* a :class:`~routing_sim.Crash` names a token by its position (each round's simulated
  clock starts at 0, so a crash window applies within every round).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError
from ..inputs.mods import derivative
from ..inputs.positions import RotaryEmbedding, check_alibi_slopes, check_position_ids
from ..network.conditions import Network
from ..network.messages import FORWARD
from ..reference.kvcache import (
    CacheLayout,
    check_new_tokens,
    check_tokens,
    rotary_tables,
    rotate_round,
)
from ..results.run import Run
from ..routes.graphs import complete
from ..routes.route_set import RouteSet
from ..simulation import simulate

__all__ = ["Decoder", "DecodeStep"]

# Options a Decoder cannot pass through unchanged, and why: each would mean something else
# in a round of T queries over t + T keys than over the whole sequence.
_REFUSED = {
    "is_causal": "the Decoder decides it: every round is causal over the cache",
    "causal_alignment": "the Decoder decides it: bottom-right over the cache (the newest "
                        "token sees every cached one)",
    "attn_mask": "a mask is shaped for one call, and each round has other shapes and "
                 "positions; pass mask_mod(b, h, q_idx, kv_idx) or a RouteSet graph over the "
                 "whole sequence, which see true positions",
    "dropout_mask": "each round would read it against its own (T, t + T) scores, not the "
                    "whole sequence's; attention dropout is for training, where simulate "
                    "runs the whole sequence",
    "labels": "label each token as it joins: step(..., label=) or extend(..., labels=)",
    "cu_seqlens_q": "packed sequences are offsets into one call's rows; a Decoder's sequences "
                    "are its batch dims, each growing by a round's tokens",
    "cu_seqlens_k": "packed sequences are offsets into one call's rows; a Decoder's sequences "
                    "are its batch dims, each growing by a round's tokens",
    "key_labels": "label each token as it joins: step(..., label=) or extend(..., labels=)",
    "position_ids": "give each round's positions as its tokens join: step(..., position_ids=) "
                    "or extend(..., position_ids=)",
    "key_position_ids": "the Decoder keeps every cached key's position; give each round's "
                        "position_ids to step() or extend()",
}
_OPTIONS = frozenset(inspect.signature(simulate).parameters) - {"query", "key", "value"}
# What a Decoder on a FlashAttention-layout cache refuses besides, and why.
_REFUSED_WITH_CACHE = {
    "graph": "a route set over one sequence does not say which of the batch's sequences it "
             "means; pass window_size",
    "mask_mod": "its indices would be the packed rows of the batch's sequences",
    "score_mod": "its indices would be the packed rows of the batch's sequences; pass softcap",
    "rope": "a FlashAttention cache holds keys already rotated: give the tables as "
            "rotary_cos/rotary_sin (and rotary_interleaved), as attention_with_kvcache takes "
            "them, and each step rotates its q and k at their slots",
    "enable_gqa": "grouped-query attention follows the head counts of q and the cache",
}


@dataclass(frozen=True)
class DecodeStep:
    """One round: its output, its Run (routing tables, trace) and message counts.

    ``position`` is the first new token's position (the only one for
    :meth:`Decoder.step`); ``tokens`` counts the new tokens and ``positions`` lists them.
    """

    position: int
    output: np.ndarray          # (..., Ev) after step(), (..., T, Ev) after extend()
    run: Run                    # its queries are the new tokens: run.routing_table(position)
    messages: int               # sent this round, retransmissions included
    recompute_messages: int     # what recomputing the causal sequence sends, fault-free
    tokens: int = 1
    cache_seqlens: np.ndarray | None = None   # (B,) each sequence's length before the round,
                                              # with a FlashAttention-layout cache

    @property
    def positions(self) -> range:
        """The positions of the tokens this round added."""
        return range(self.position, self.position + self.tokens)

    @property
    def lse(self) -> np.ndarray:
        """The new tokens' log-sum-exp (``run.lse``): ``(...)`` after step(), ``(..., T)``
        after extend(); the rows of whole-sequence ``attention(..., is_causal=True,
        return_lse=True)``."""
        if self.cache_seqlens is not None:      # run.lse is (H, B·T): FlashAttention's (B, H, T)
            heads = self.output.shape[2]
            return self.run.lse.reshape(heads, -1, self.tokens).transpose(1, 0, 2)
        return self.run.lse.reshape(self.output.shape[:-1])


class Decoder:
    """A growing cluster of token nodes with a KV cache.

    Round by round it computes causal attention ``softmax(q_i · K[:p+1]ᵀ · scale + bias)
    V[:p+1]`` for each new token at position ``p``: the rows of whole-sequence
    :func:`~routing_sim.attention` with ``is_causal=True`` and the same options.

    Parameters
    ----------
    k_cache, v_cache : ndarray, shape (B, S, H_kv, D) or (num_blocks, page_size, H_kv, D)
        Optional: start from a FlashAttention-layout cache, as
        :func:`~routing_sim.attention_with_kvcache` takes it: a batch of sequences, each
        with its own length, a row each or pages of ``block_table``. :meth:`step` (and
        :meth:`extend`, the same) then take ``(B, T, heads, headdim)``, write the new keys
        and values into the cache **in place**, and return ``.output`` as ``(B, T, H, Dv)``
        and ``.lse`` as ``(B, H, T)``: ``attention_with_kvcache(..., causal=True)`` of the
        same tensors, with the same options. One round simulates every sequence's new
        tokens together, packed (no route crosses sequences); a key's label says where it
        lives: ``"seq b page p slot s"`` (paged) or ``"seq b row r slot s"``.
    cache_seqlens : int or array_like of int, shape (B,), optional
        Each sequence's length before the first step (default 0); the Decoder tracks them
        (``decoder.cache_seqlens``).
    block_table : array_like of int, shape (B, max_blocks), optional
        The pages of each sequence (a paged cache); pages may be shared.
    cache_leftpad : array_like of int, shape (B,), optional
        Where each sequence starts: slots before it are never attended.
    rotary_cos, rotary_sin : array_like, shape (seqlen_ro, rotary_dim / 2), optional
        RoPE tables for a FlashAttention-layout cache, as
        :func:`~routing_sim.attention_with_kvcache` takes them: each round turns its new
        keys by the rows of their slots ``cache_seqlens[b] + t`` and stores them rotated,
        and turns its queries by the same rows (features past ``rotary_dim`` pass
        unchanged). A slot with no row is refused before the cache changes.
    rotary_interleaved : bool
        The tables' pairs: ``(0, 1), (2, 3), ...`` (GPT-J) if True, else ``(d, d +
        rotary_dim / 2)`` (GPT-NeoX).
    graph : RouteSet, optional
        A self-attention route set over the whole sequence (``n_queries == n_keys == N``,
        one group, e.g. ``rs.patterns.sliding_window(N, 4)``); a round reads its rows at
        the new tokens' positions, together with causality. Decoding past ``N`` tokens
        raises :class:`~routing_sim.ShapeError`.
    mask_mod, score_mod : callable, optional
        As in :func:`~routing_sim.simulate`, called with ``q_idx`` the query's position in
        the whole sequence.
    network : Network, optional
        As in :func:`~routing_sim.simulate`; a :class:`~routing_sim.Crash` names a token by
        its position, and its window applies within each round (every round's clock starts
        at 0).
    **options
        Passed to every :func:`~routing_sim.simulate` round unchanged: ``scale``,
        ``enable_gqa``, ``numerics``, ``softmax``, ``alibi_slopes``, ``rope``, ``routing``,
        ``top_k``, ``empty_rows``, ``trace``, ``delivery``, ``engine``, ``seed``,
        ``sinks``, ``window_size`` (a local window: each round sends messages only on the
        window's routes, so a step costs O(left) messages however long the cache grows),
        ``softcap``. On a FlashAttention-layout cache ``alibi_slopes`` may be ``(B, H)``,
        one row per sequence, and ALiBi counts a key's position from its sequence's left
        pad.

    Raises
    ------
    InvalidArgumentError
        For an option a round cannot honour, naming it and saying why: ``is_causal`` and
        ``causal_alignment`` (the Decoder sets them), ``attn_mask`` (use ``mask_mod`` or a
        RouteSet ``graph``), ``dropout_p > 0`` and ``dropout_mask`` (a round would draw or
        read its own dropout, not the whole sequence's), ``labels``/``key_labels`` (label
        tokens as they join), ``position_ids``/``key_position_ids`` (give each round's
        ``position_ids`` to ``step`` or ``extend``), ``cu_seqlens_q``/``cu_seqlens_k`` (the
        batch dims are the sequences), a networkx ``graph`` or a cross-attention or per-head
        RouteSet; and for a keyword :func:`~routing_sim.simulate` does not take. With a
        FlashAttention-layout cache also ``graph``, ``mask_mod``, ``score_mod``, ``rope``
        (the cache holds rotated keys: give ``rotary_cos``/``rotary_sin``), ``enable_gqa``
        (it follows the head counts) and a network with crashes; and the cache's own errors
        (as ``attention_with_kvcache``). ``rotary_cos``/``rotary_sin`` without a
        FlashAttention-layout cache (pass ``rope``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 4))
    >>> decoder = Decoder()
    >>> steps = [decoder.step(q[t], k[t], v[t]) for t in range(5)]
    >>> from routing_sim import attention
    >>> full = attention(q, k, v, is_causal=True)
    >>> all(np.allclose(s.output, full[s.position], rtol=1e-12, atol=1e-12) for s in steps)
    True
    >>> [s.messages for s in steps], steps[-1].recompute_messages
    ([4, 8, 12, 16, 20], 60)
    >>> steps[-1].run.routing_table(4).token
    4
    >>> _, lse = attention(q, k, v, is_causal=True, return_lse=True)
    >>> bool(np.allclose([s.lse for s in steps], lse, rtol=1e-12))
    True

    A ``mask_mod`` sees each token's true position, here a window of the two latest tokens;
    ``extend`` adds a chunk of tokens in one round (token 3 sees tokens 2 and 3, token 4
    sees 3 and 4):

    >>> window = lambda b, h, q_idx, kv_idx: q_idx - kv_idx <= 1
    >>> decoder = Decoder(mask_mod=window)
    >>> first = decoder.extend(q[:3], k[:3], v[:3])
    >>> chunk = decoder.extend(q[3:], k[3:], v[3:])
    >>> chunk.positions, chunk.output.shape
    (range(3, 5), (2, 4))
    >>> full = attention(q, k, v, is_causal=True, mask_mod=window)
    >>> bool(np.allclose(chunk.output, full[3:], rtol=1e-12, atol=1e-12))
    True
    >>> sorted(route.source for route in chunk.run.routing_table(4).routes), chunk.messages
    ([3, 4], 16)

    FlashAttention's ``window_size`` says the same: the two latest tokens, and a step's
    messages stop growing with the cache:

    >>> decoder = Decoder(window_size=(1, 0))
    >>> steps = [decoder.step(q[t], k[t], v[t]) for t in range(5)]
    >>> full = attention(q, k, v, is_causal=True, window_size=(1, 0))
    >>> all(np.allclose(s.output, full[s.position], rtol=1e-12, atol=1e-12) for s in steps)
    True
    >>> [s.messages for s in steps]
    [4, 8, 8, 8, 8]

    On a paged FlashAttention-layout cache, two sequences of lengths 3 and 1 grow by one
    token each; the step equals ``attention_with_kvcache(..., causal=True)``:

    >>> from routing_sim import attention_with_kvcache
    >>> pages, page_values = rng.normal(size=(2, 4, 2, 1, 4))        # 4 pages of 2 slots
    >>> before = pages.copy(), page_values.copy()
    >>> decoder = Decoder(k_cache=pages, v_cache=page_values, cache_seqlens=[3, 1],
    ...                   block_table=[[2, 0], [3, 1]])
    >>> q, k, v = rng.normal(size=(3, 2, 1, 1, 4))                   # (B, T, heads, headdim)
    >>> step = decoder.step(q, k, v)
    >>> expected = attention_with_kvcache(q, *before, k, v, cache_seqlens=[3, 1],
    ...                                   block_table=[[2, 0], [3, 1]], causal=True)
    >>> bool(np.allclose(step.output, expected, rtol=1e-12)), decoder.cache_seqlens.tolist()
    (True, [4, 2])
    >>> sorted(route.label for route in step.run.routing_table(1, head=0).routes)
    ['seq 1 page 3 slot 0', 'seq 1 page 3 slot 1']

    With RoPE tables (a row per slot) and ALiBi slopes per sequence, each new key is
    rotated at its slot and stored so:

    >>> angle = rng.random((8, 2)) * np.pi                          # 8 slots, rotary_dim 4
    >>> cache = rng.normal(size=(2, 2, 8, 1, 4))                    # k_cache, v_cache
    >>> before = cache.copy()
    >>> decoder = Decoder(k_cache=cache[0], v_cache=cache[1], cache_seqlens=[2, 5],
    ...                   rotary_cos=np.cos(angle), rotary_sin=np.sin(angle),
    ...                   alibi_slopes=[[0.5], [0.25]])
    >>> step = decoder.step(q, k, v)
    >>> expected = attention_with_kvcache(q, *before, k, v, cache_seqlens=[2, 5], causal=True,
    ...                                   rotary_cos=np.cos(angle), rotary_sin=np.sin(angle),
    ...                                   alibi_slopes=[[0.5], [0.25]])
    >>> bool(np.allclose(step.output, expected, rtol=1e-12)), bool((before == cache).all())
    (True, True)
    """

    def __init__(self, *, graph: RouteSet | None = None, mask_mod: Callable | None = None,
                 score_mod: Callable | None = None, network: Network | None = None,
                 k_cache: ArrayLike | None = None, v_cache: ArrayLike | None = None,
                 cache_seqlens: ArrayLike | int | None = None,
                 block_table: ArrayLike | None = None, cache_leftpad: ArrayLike | None = None,
                 rotary_cos: ArrayLike | None = None, rotary_sin: ArrayLike | None = None,
                 rotary_interleaved: bool = True, **options) -> None:
        for name in options:
            if name in _REFUSED:
                raise InvalidArgumentError(f"Decoder does not take {name}: {_REFUSED[name]}")
            if name not in _OPTIONS:
                raise InvalidArgumentError(f"Decoder got an unknown option {name!r}; it takes "
                                           f"simulate's keywords: {sorted(_OPTIONS)}")
        if options.get("dropout_p", 0.0) != 0.0:
            raise InvalidArgumentError(f"Decoder does not take dropout_p="
                                       f"{options['dropout_p']!r}: each round would draw its "
                                       "own dropout for its own (T, t + T) scores, not the "
                                       "whole sequence's; attention dropout is for training, "
                                       "where simulate runs the whole sequence")
        for name, mod in (("mask_mod", mask_mod), ("score_mod", score_mod)):
            if mod is not None and not callable(mod):
                raise InvalidArgumentError(f"{name} must be a function, got "
                                           f"{type(mod).__name__}")
        self.pattern = None if graph is None else _Pattern(graph)
        self.mask_mod = mask_mod
        self.score_mod = score_mod
        self.network = network
        self.options = options
        self.keys: np.ndarray | None = None      # (..., t, E) the registry of published keys
        self.values: np.ndarray | None = None    # (..., t, Ev)
        self.labels: list[str] = []
        self.key_positions: np.ndarray | None = None  # (..., t) RoPE positions, once given
        self.messages = 0                        # sent over all rounds so far
        self.routes = 0                          # routes over all rounds: the causal sequence's
        self.cache: CacheLayout | None = None    # a FlashAttention-layout cache, if given
        self.cache_seqlens: np.ndarray | None = None  # (B,) its sequences' lengths
        self.cache_leftpad: np.ndarray | None = None  # (B,)
        self.rotary: RotaryEmbedding | None = None    # the cache's cos/sin tables, if given
        if k_cache is None and v_cache is None:
            for name, given in (("cache_seqlens", cache_seqlens), ("block_table", block_table),
                                ("cache_leftpad", cache_leftpad), ("rotary_cos", rotary_cos),
                                ("rotary_sin", rotary_sin)):
                if given is not None:
                    raise InvalidArgumentError(f"{name} describes a FlashAttention-layout "
                                               "cache: give k_cache and v_cache with it")
            return
        if k_cache is None or v_cache is None:
            raise InvalidArgumentError("k_cache and v_cache come together: give both")
        given_options = {"graph": graph, "mask_mod": mask_mod, "score_mod": score_mod,
                         **options}
        for name, reason in _REFUSED_WITH_CACHE.items():
            if given_options.get(name) is not None:
                raise InvalidArgumentError(f"a Decoder on a FlashAttention-layout cache does "
                                           f"not take {name}: {reason}")
        if network is not None and network.crashes:
            raise InvalidArgumentError("a Decoder on a FlashAttention-layout cache does not "
                                       "take a network with crashes: its token nodes are the "
                                       "packed rows of the batch's sequences")
        n_batch = np.shape(block_table)[0] if block_table is not None and np.ndim(
            block_table) else np.shape(k_cache)[0]
        self.cache = CacheLayout.check(k_cache, v_cache, n_batch, None, None,
                                       block_table=block_table)
        self.cache_seqlens, self.cache_leftpad = self.cache.sequences(
            0 if cache_seqlens is None else cache_seqlens, cache_leftpad, 0)
        self.rotary = rotary_tables(rotary_cos, rotary_sin, rotary_interleaved)

    def __len__(self) -> int:
        """The tokens in the cache (the longest sequence's, on a FlashAttention cache)."""
        if self.cache_seqlens is not None:
            return int(self.cache_seqlens.max(initial=0))
        return 0 if self.keys is None else self.keys.shape[-2]

    def step(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
             label: str | None = None, position_ids: ArrayLike | None = None) -> DecodeStep:
        """Add one token (its query ``(..., E)``, key ``(..., E)``, value ``(..., Ev)``).

        ``position_ids`` (an int, or ``(B,)``: one per batch element) is where RoPE places
        the token, as in :meth:`extend`. Returns a :class:`DecodeStep` whose ``output`` is
        ``(..., Ev)``: row ``position`` of whole-sequence causal attention.

        On a FlashAttention-layout cache (``Decoder(k_cache=...)``) it takes ``(B, T,
        heads, headdim)`` and is :meth:`extend`.
        """
        if self.cache is not None:
            return self.extend(query, key, value, None if label is None else [label],
                               position_ids)
        tokens = []
        for name, array in (("query", query), ("key", key), ("value", value)):
            array = np.asarray(array)
            if array.ndim < 1:
                raise ShapeError(f"step takes one token: {name} must be (..., features), got "
                                 f"shape {array.shape}")
            tokens.append(array[..., None, :])                          # (..., 1, F)
        query, key, value = tokens
        if position_ids is not None:
            position_ids = np.asarray(position_ids)[..., None]                 # (..., 1)
        joined = self.extend(query, key, value, None if label is None else [label],
                             position_ids)
        return replace(joined, output=joined.output[..., 0, :])

    def extend(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
               labels: Sequence[str] | None = None, position_ids: ArrayLike | None = None
               ) -> DecodeStep:
        """Add a chunk of ``T`` tokens in one round (query ``(..., T, E)``, key
        ``(..., T, E)``, value ``(..., T, Ev)``), as a prefill or speculative decoding does.

        Token ``i`` of the chunk sits at position ``t + i`` (``t = len(decoder)``) and
        sees the cache and the chunk's tokens up to itself (bottom-right causal). Returns a
        :class:`DecodeStep` whose ``output`` is ``(..., T, Ev)``: rows ``t .. t+T-1`` of
        whole-sequence causal attention.

        ``position_ids`` ``(T,)`` or ``(B, T)`` place the chunk's tokens for RoPE (needs
        ``rope``), as a model's ``position_ids`` for the new tokens (left padding, packed
        prompts); the cache keeps them, so later rounds rotate the cached keys at the same
        places. Tokens of a round given none sit at their index ``t + i``. The rounds then
        equal whole-sequence :func:`~routing_sim.attention` with ``position_ids`` the
        rounds' positions side by side.

        On a FlashAttention-layout cache it takes query ``(B, T, H, D)``, key and value
        ``(B, T, H_kv, D)`` and ``(B, T, H_kv, Dv)``, and no labels or positions (see the
        class).
        """
        if self.cache is not None:
            if labels is not None or position_ids is not None:
                raise InvalidArgumentError("on a FlashAttention-layout cache a key's label is "
                                           "its page and slot, and its position its slot: "
                                           "step() takes no label or position_ids")
            return self._extend_cache(query, key, value)
        query, key, value = (np.asarray(x) for x in (query, key, value))
        for name, array in (("query", query), ("key", key), ("value", value)):
            if array.ndim < 2:
                raise ShapeError(f"extend takes a chunk: {name} must be (..., T, features), "
                                 f"got shape {array.shape}; step() takes one token")
        count = query.shape[-2]
        if count == 0 or key.shape[-2] != count or value.shape[-2] != count:
            raise ShapeError(f"a chunk needs the same T >= 1 new tokens in query, key and "
                             f"value, got query {query.shape}, key {key.shape} and value "
                             f"{value.shape}")
        if self.keys is not None and self.values is not None and (
                key.shape[:-2] != self.keys.shape[:-2] or key.shape[-1] != self.keys.shape[-1]
                or value.shape[-1] != self.values.shape[-1]):
            raise ShapeError(f"token {len(self)} has key {key.shape[:-2] + key.shape[-1:]} and "
                             f"value {value.shape[:-2] + value.shape[-1:]}, but the cache holds "
                             f"keys {self.keys.shape} and values {self.values.shape}")
        first = len(self)
        stop = first + count
        if self.pattern is not None:
            self.pattern.check_covers(stop)
        if labels is not None and len(labels) != count:
            raise ShapeError(f"labels has {len(labels)} entries for a chunk of {count} tokens")
        new_labels = [f"t{position}" for position in range(first, stop)] if labels is None \
            else [str(label) for label in labels]
        keys = key if self.keys is None else np.concatenate([self.keys, key], axis=-2)
        values = value if self.values is None else np.concatenate([self.values, value], axis=-2)
        position_ids, key_position_ids = self._placed(position_ids, first, stop)
        graph = complete(count, stop, labels=new_labels, key_labels=[*self.labels, *new_labels])
        for offset in range(count):                 # the new tokens, not the cache's first
            graph.nodes[offset]["position"] = first + offset
        mask_mod = None if self.pattern is None and self.mask_mod is None else \
            _MaskAtPositions(self.mask_mod, self.pattern, first)
        score_mod = None if self.score_mod is None else _ScoreAtPositions(self.score_mod, first)
        run = simulate(query, keys, values, is_causal=True, graph=graph,
                       network=_round_network(self.network, first, stop),
                       causal_alignment="bottom_right", mask_mod=mask_mod,
                       score_mod=score_mod, position_ids=position_ids,
                       key_position_ids=key_position_ids, **self.options)
        self.keys, self.values = keys, values
        self.key_positions = key_position_ids
        self.labels += new_labels
        self.messages += run.stats.total_messages
        # Rows of causal attention depend only on the keys up to them, so the routes of
        # every round so far are exactly the routes of the causal sequence: four messages
        # each, none resent.
        self.routes += run.stats.routes
        return DecodeStep(first, run.output, run, run.stats.total_messages,
                          len(FORWARD) * self.routes, count)

    def _extend_cache(self, query: ArrayLike, key: ArrayLike, value: ArrayLike
                      ) -> DecodeStep:
        """One round on the FlashAttention-layout cache: append, then simulate the batch's
        sequences packed (varlen), each over its keys from its left pad to its new end."""
        assert self.cache is not None and self.cache_seqlens is not None \
            and self.cache_leftpad is not None, "set together in __init__"
        queries = check_tokens("query", query)
        n_batch, count, heads, head_dim = queries.shape
        cache = self.cache
        CacheLayout.check(cache.k_cache, cache.v_cache, n_batch, heads, head_dim,
                          block_table=cache.block_table)
        keys, values = check_new_tokens(key, value, cache, n_batch)
        assert keys is not None and values is not None, "key and value are given"
        if keys.shape[1] != count:
            raise ShapeError(f"a round adds tokens with a query, key and value each: query "
                             f"has {count} new tokens but key has {keys.shape[1]}")
        lengths, leftpad = cache.sequences(self.cache_seqlens, self.cache_leftpad, count)
        options = dict(self.options)
        if options.get("alibi_slopes") is not None:   # (B, H): one row per packed sequence
            slopes = check_alibi_slopes(options["alibi_slopes"], (n_batch, heads))
            options["alibi_slopes"] = slopes if slopes.ndim < 2 else \
                np.broadcast_to(slopes, (n_batch, heads))
        if self.rotary is not None:
            # FlashAttention's order: k is rotated at its slot, then stored; q turns at the
            # same slots (a Decoder is causal). Checked before the cache changes.
            queries, keys = rotate_round(self.rotary, queries, keys, lengths, local=True)
        for b in range(n_batch):
            cache.write(b, int(lengths[b]), keys[b], values[b])
        kind = "row" if cache.block_table is None else "page"
        gathered, key_labels = [], []
        for b in range(n_batch):
            gathered.append(cache.gather(b, int(leftpad[b]), int(lengths[b]) + count))
            where, slots = cache.slots(b, int(leftpad[b]), int(lengths[b]) + count)
            key_labels += [f"seq {b} {kind} {w} slot {s}" for w, s in zip(where, slots)]
        labels = [f"seq {b} t{int(lengths[b]) + i}" for b in range(n_batch)
                  for i in range(count)]
        n_keys = lengths + count - leftpad                                   # (B,)
        run = simulate(queries.transpose(2, 0, 1, 3).reshape(heads, n_batch * count, head_dim),
                       np.concatenate([k for k, _ in gathered], axis=1),     # (H_kv, ΣS, D)
                       np.concatenate([v for _, v in gathered], axis=1),     # (H_kv, ΣS, Dv)
                       is_causal=True, causal_alignment="bottom_right", enable_gqa=True,
                       cu_seqlens_q=np.arange(n_batch + 1) * count,
                       cu_seqlens_k=np.concatenate([[0], np.cumsum(n_keys)]),
                       labels=labels, key_labels=key_labels, network=self.network,
                       **options)
        output = run.output.reshape(heads, n_batch, count, -1).transpose(1, 2, 0, 3)
        self.cache_seqlens = lengths + count
        self.messages += run.stats.total_messages
        self.routes += run.stats.routes
        return DecodeStep(int(lengths[0]), output, run, run.stats.total_messages,
                          len(FORWARD) * self.routes, count, cache_seqlens=lengths)

    def _placed(self, position_ids: ArrayLike | None, first: int, stop: int
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The round's RoPE positions for simulate: ``position_ids`` ``(..., T)`` of the new
        tokens and ``key_position_ids`` ``(..., t + T)`` of the whole cache; None for both
        while no round was given positions (the bottom-right alignment then places every
        token at its index)."""
        if position_ids is None and self.key_positions is None:
            return None, None
        new = np.arange(first, stop) if position_ids is None else \
            check_position_ids("position_ids", position_ids, stop - first)      # (..., T)
        cached = np.arange(first) if self.key_positions is None else self.key_positions
        try:
            batch = np.broadcast_shapes(new.shape[:-1], cached.shape[:-1])
        except ValueError:
            raise ShapeError(f"position_ids of shape {new.shape} does not fit the positions of "
                             f"earlier rounds {cached.shape}: give (T,) or the same (B, T) "
                             "batch") from None
        keys = np.concatenate([np.broadcast_to(cached, (*batch, first)),
                               np.broadcast_to(new, (*batch, stop - first))], axis=-1)
        return new, keys                                                  # (..., t + T)


class _Pattern:
    """A one-group self-attention RouteSet over the whole sequence, asked route by route."""

    def __init__(self, routes: RouteSet) -> None:
        if isinstance(routes, nx.DiGraph):
            raise InvalidArgumentError("Decoder takes graph= as a RouteSet over the whole "
                                       "sequence (e.g. rs.patterns.sliding_window(n, w) or "
                                       "rs.RouteSet.from_graph(graph)): it labels and places "
                                       "each round's tokens itself")
        if not isinstance(routes, RouteSet):
            raise InvalidArgumentError(f"Decoder's graph must be a RouteSet, got "
                                       f"{type(routes).__name__}")
        if routes.cross or routes.n_queries != routes.n_keys or routes.n_groups != 1:
            raise InvalidArgumentError(f"Decoder's graph must be one self-attention route set "
                                       f"shared by every batch element and head, got {routes!r}"
                                       f"{' (cross-attention)' if routes.cross else ''}; for "
                                       "per-head routes pass a mask_mod")
        self.routes = routes
        # Route (i, j) as the code i·N + j: CSR order makes the codes ascending.
        self.codes = routes.query_node.astype(np.int64) * routes.n_keys + routes.indices  # (R,)

    def check_covers(self, stop: int) -> None:
        if stop > self.routes.n_keys:
            raise ShapeError(f"the Decoder's graph covers {self.routes.n_keys} tokens; token "
                             f"{stop - 1} would be past its end")

    def allows(self, position: ArrayLike, kv_idx: ArrayLike) -> np.ndarray:
        """Whether the route set holds each route ``(position, kv_idx)`` (broadcast)."""
        codes = np.asarray(position, dtype=np.int64) * self.routes.n_keys + \
            np.asarray(kv_idx, dtype=np.int64)
        found = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        return (self.codes[found] == codes) if len(self.codes) else np.zeros(codes.shape, bool)


class _MaskAtPositions:
    """A round's mask_mod: the pattern's rows and the user's mask_mod at true positions."""

    def __init__(self, mask_mod: Callable | None, pattern: _Pattern | None, first: int) -> None:
        self.mask_mod, self.pattern, self.first = mask_mod, pattern, first

    def __call__(self, b, h, q_idx, kv_idx):
        position = q_idx + self.first
        if self.pattern is None:
            assert self.mask_mod is not None, "built only with a pattern or a mask_mod"
            return self.mask_mod(b, h, position, kv_idx)
        allowed = self.pattern.allows(position, kv_idx)
        if self.mask_mod is None:
            return allowed
        return allowed & np.asarray(self.mask_mod(b, h, position, kv_idx))

    def __repr__(self) -> str:
        parts = [repr(part) for part in (self.pattern and self.pattern.routes, self.mask_mod)
                 if part is not None]
        return f"{' & '.join(parts)} at query positions {self.first}+"


class _ScoreAtPositions:
    """A round's score_mod: the user's, called with the queries' true positions."""

    def __init__(self, score_mod: Callable, first: int) -> None:
        self.score_mod, self.first = score_mod, first

    def __call__(self, score, b, h, q_idx, kv_idx):
        return self.score_mod(score, b, h, q_idx + self.first, kv_idx)

    @property
    def grad(self) -> Callable:
        """The user's derivative at the same positions (a clear error if it has none)."""
        slope = derivative(self.score_mod)
        assert slope is not None, "a score_mod is set"
        return lambda score, b, h, q_idx, kv_idx: slope(score, b, h, q_idx + self.first, kv_idx)

    def __repr__(self) -> str:
        return f"{self.score_mod!r} at query positions {self.first}+"


def _round_network(network: Network | None, first: int, stop: int) -> Network | None:
    """The network of the round adding tokens ``first .. stop-1``: each crash moved from the
    token's position to its node in the round (query ``i`` is token ``first + i``, key ``j``
    is token ``j``), dropped while that token is not in the round."""
    if network is None or not network.crashes:
        return network
    crashes = []
    for crash in network.crashes:
        if crash.side in ("query", "both") and first <= crash.token < stop:
            crashes.append(replace(crash, token=crash.token - first, side="query"))
        if crash.side in ("key", "both") and crash.token < stop:
            crashes.append(replace(crash, side="key"))
    return replace(network, crashes=tuple(crashes))
