"""One error contract over both public entry points: bad input -> a clear RoutingSimError."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import routing_sim as rs

Q, K, V = np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))

BAD_INPUTS = [
    # (arguments, keyword arguments, error type, words the message must contain)
    ((Q, np.ones((5, 3)), V), {}, rs.ShapeError, ["E = 4", "key has 3"]),
    ((Q, K, np.ones((4, 2))), {}, rs.ShapeError, ["S = 5", "value has 4"]),
    ((np.ones(4), K, V), {}, rs.ShapeError, ["query", "(4,)"]),
    ((Q, K, V.astype(complex)), {}, rs.DTypeError, ["value", "complex128"]),
    ((Q, K.astype(object), V), {}, rs.DTypeError, ["key", "object"]),
    ((Q.astype(bool), K, V), {}, rs.DTypeError, ["query", "bool"]),
    ((Q.astype(np.float32), K, V), {}, rs.DTypeError, ["float32", "float64"]),
    (([["a"]], K, V), {}, rs.DTypeError, ["query"]),
    ((np.where(np.eye(3, 4) > 0, np.nan, 1.0), K, V), {}, rs.InvalidArgumentError,
     ["query", "nan", "(0, 0)"]),
    ((Q, np.full((5, 4), np.inf), V), {}, rs.InvalidArgumentError, ["key", "inf"]),
    ((Q, K, V), {"attn_mask": np.ones((3, 4), dtype=bool)}, rs.ShapeError,
     ["attn_mask", "(3, 4)", "(3, 5)"]),
    ((Q, K, V), {"attn_mask": np.ones((3, 5), dtype=int)}, rs.DTypeError, ["attn_mask", "int"]),
    ((Q, K, V), {"attn_mask": np.full((3, 5), np.nan)}, rs.InvalidArgumentError,
     ["attn_mask", "nan"]),
    ((Q, K, V), {"attn_mask": np.full((3, 5), np.inf)}, rs.InvalidArgumentError,
     ["attn_mask", "inf"]),
    ((Q, K, V), {"attn_mask": np.ones((3, 5), dtype=bool), "is_causal": True},
     rs.InvalidArgumentError, ["attn_mask", "is_causal"]),
    ((Q, K, V), {"is_causal": True, "causal_alignment": "middle"}, rs.InvalidArgumentError,
     ["causal_alignment", "middle"]),
    ((Q, K, V), {"scale": float("nan")}, rs.InvalidArgumentError, ["scale", "nan"]),
    ((Q, K, V), {"scale": "big"}, rs.InvalidArgumentError, ["scale", "big"]),
    ((Q, K, V), {"dropout_p": 1.0}, rs.InvalidArgumentError, ["dropout_p", "1.0"]),
    ((Q, K, V), {"empty_rows": "skip"}, rs.InvalidArgumentError, ["empty_rows", "skip"]),
    ((np.ones((2, 3, 4)), np.ones((3, 5, 4)), np.ones((3, 5, 2))), {}, rs.ShapeError,
     ["batch dims", "(2,)", "(3,)"]),
    ((np.ones((6, 3, 4)), np.ones((4, 5, 4)), np.ones((4, 5, 2))), {"enable_gqa": True},
     rs.ShapeError, ["query heads (6)", "key/value heads (4)"]),
    ((np.ones((3, 0)), np.ones((5, 0)), V), {}, rs.ShapeError, ["E >= 1"]),
]

ENTRY_POINTS = {
    "attention": rs.attention,
    "simulate": rs.simulate,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("args, kwargs, error, words", BAD_INPUTS)
def test_bad_input_is_named(entry, args, kwargs, error, words):
    with pytest.raises(error) as caught:
        ENTRY_POINTS[entry](*args, **kwargs)
    assert isinstance(caught.value, rs.RoutingSimError)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_error_types_are_also_builtin_types():
    assert issubclass(rs.ShapeError, ValueError)
    assert issubclass(rs.InvalidArgumentError, ValueError)
    assert issubclass(rs.DTypeError, TypeError)
    assert issubclass(rs.DeliveryError, rs.RoutingSimError)


SIMULATE_ONLY = [
    ({"network": rs.Network}, rs.InvalidArgumentError, ["network", "Network"]),
    ({"graph": rs.graphs.complete(4)}, rs.ShapeError, ["graph has 4", "L = 3", "S = 5"]),
    ({"graph": nx.DiGraph([(0, "x")])}, rs.ShapeError, ["integers", "'x'"]),
    ({"trace": "verbose"}, rs.InvalidArgumentError, ["trace", "verbose"]),
    ({"delivery": "fast"}, rs.InvalidArgumentError, ["delivery", "fast"]),
    ({"numerics": "fuzzy"}, rs.InvalidArgumentError, ["numerics", "fuzzy"]),
    ({"softmax": "hard"}, rs.InvalidArgumentError, ["softmax", "hard"]),
]


@pytest.mark.parametrize("kwargs, error, words", SIMULATE_ONLY)
def test_simulate_arguments(kwargs, error, words):
    with pytest.raises(error) as caught:
        rs.simulate(Q, K, V, **kwargs)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize("kwargs, words", [
    ({"latency": -1.0}, ["latency", "-1.0"]),
    ({"jitter": float("inf")}, ["jitter", "inf"]),
    ({"latency": "slow"}, ["latency", "slow"]),
    ({"seed": 1.5}, ["seed", "1.5"]),
])
def test_bad_network(kwargs, words):
    with pytest.raises(rs.InvalidArgumentError) as caught:
        rs.Network(**kwargs)
    for word in words:
        assert word in str(caught.value)


def test_negative_edge_latency():
    graph = rs.graphs.complete(2)
    graph.edges[0, 1]["latency"] = -2.0
    with pytest.raises(rs.InvalidArgumentError, match="edge 0 -> 1 has latency -2.0"):
        rs.simulate(np.eye(2), np.eye(2), np.eye(2), graph=graph)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_score_overflow_is_an_error_not_a_nan(entry):
    big = np.full((2, 2), 1e200)
    with pytest.raises(rs.NumericalError, match="overflowed"):
        ENTRY_POINTS[entry](big, big, np.ones((2, 1)))
