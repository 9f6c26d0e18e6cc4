"""The option vocabulary, and simulate's engine choices as one EngineOptions object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.options import engine_options


def _inputs():
    return np.random.default_rng(3).normal(size=(3, 2, 5, 4))


def test_defaults_are_simulates_defaults():
    options = rs.EngineOptions()
    assert (options.engine, options.softmax, options.numerics, options.routing,
            options.top_k, options.delivery) == ("fast", "two_phase", "float", "softmax",
                                                 None, "window")


@pytest.mark.parametrize("name, bad", [("engine", "slow"), ("softmax", "soft"),
                                       ("numerics", "double"), ("routing", "hard"),
                                       ("delivery", "batch")])
def test_a_bad_value_is_refused_naming_the_option(name, bad):
    with pytest.raises(rs.InvalidArgumentError, match=f"{name} must be one of .*'{bad}'"):
        rs.EngineOptions(**{name: bad})


@pytest.mark.parametrize("clash, words", [
    ({"softmax": "online", "routing": "topk"}, "routing='topk' needs every score first"),
    ({"softmax": "online", "numerics": "exact"}, "numerics='exact' needs softmax='two_phase'"),
    ({"softmax": "online", "engine": "plain"}, "softmax='online' needs engine='fast'"),
    ({"top_k": 2}, "top_k=2 only applies with routing=\"topk\""),
    ({"routing": "topk", "top_k": 0}, "top_k must be a positive integer, got 0"),
    ({"routing": "topk", "top_k": True}, "top_k must be a positive integer, got True"),
    ({"routing": "topk", "top_k": 1.5}, "top_k must be a positive integer, got 1.5"),
])
def test_combinations_that_cannot_run_are_refused_when_made(clash, words):
    with pytest.raises(rs.InvalidArgumentError, match=words.replace("(", r"\(")):
        rs.EngineOptions(**clash)


def test_hard_routing_without_top_k_keeps_one_route_and_numpy_integers_are_taken():
    assert rs.EngineOptions(routing="topk").top_k == 1
    top = rs.EngineOptions(routing="topk", top_k=np.int64(3)).top_k
    assert top == 3 and type(top) is int


def test_the_options_are_frozen():
    options = rs.EngineOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.softmax = "online"  # type: ignore[misc]


CHOICES = [{"softmax": "online"}, {"numerics": "exact"}, {"routing": "topk", "top_k": 2},
           {"delivery": "per_message"}, {"engine": "plain"}, {}]


@pytest.mark.parametrize("choices", CHOICES, ids=lambda c: ",".join(map(str, c.values())))
def test_the_object_runs_what_the_flat_keywords_run(choices):
    q, k, v = _inputs()
    network = rs.Network(latency=1.0, jitter=0.5, seed=2)
    flat = rs.simulate(q, k, v, is_causal=True, network=network, **choices)
    grouped = rs.simulate(q, k, v, is_causal=True, network=network,
                          engine=rs.EngineOptions(**choices))
    assert np.array_equal(flat.output, grouped.output)
    assert np.array_equal(flat.trace.arrive, grouped.trace.arrive)
    assert flat.stats.messages == grouped.stats.messages
    # and both are the matrix form's answer (exact mode bit for bit)
    numerics = choices.get("numerics", "float")
    if choices.get("routing") != "topk":
        expected = rs.attention(q, k, v, is_causal=True, numerics=numerics)
        if numerics == "exact":
            assert np.array_equal(grouped.output, expected)
        else:
            np.testing.assert_allclose(grouped.output, expected, rtol=1e-12, atol=1e-15)


def test_each_choice_reaches_the_engine():
    q, k, v = _inputs()
    online = rs.simulate(q, k, v, engine=rs.EngineOptions(softmax="online"))
    assert len(online.stream(0, head=0)) == 5                    # one state per arrival
    hard = rs.simulate(q, k, v, engine=rs.EngineOptions(routing="topk", top_k=2))
    assert ((hard.weights > 0).sum(axis=-1) == 2).all()
    with pytest.raises(rs.InvalidArgumentError, match="engine='plain' runs the two-phase"):
        rs.simulate(q, k, v, engine=rs.EngineOptions(engine="plain"),
                    network=rs.Network(loss=0.1, retries=3))
    exact = rs.simulate(q, k, v, engine=rs.EngineOptions(numerics="exact"))
    assert np.array_equal(exact.output, rs.attention(q, k, v, numerics="exact"))


@pytest.mark.parametrize("flat", [{"softmax": "online"}, {"top_k": 2, "routing": "topk"},
                                  {"delivery": "instant"}, {"numerics": "exact"}])
def test_a_flat_keyword_beside_the_object_is_refused_naming_it(flat):
    q, k, v = _inputs()
    with pytest.raises(rs.InvalidArgumentError, match="would say one of them twice") as error:
        rs.simulate(q, k, v, engine=rs.EngineOptions(), **flat)
    for name, value in flat.items():
        assert f"{name}={value!r}" in str(error.value)


def test_flat_keywords_are_checked_as_the_object_checks_them():
    q, k, v = _inputs()
    for flat in ({"softmax": "online", "numerics": "exact"}, {"top_k": 3}):
        with pytest.raises(rs.InvalidArgumentError) as by_simulate:
            rs.simulate(q, k, v, **flat)
        with pytest.raises(rs.InvalidArgumentError) as by_object:
            rs.EngineOptions(**flat)
        assert str(by_simulate.value) == str(by_object.value)


def test_engine_options_passes_an_object_through_and_builds_one_from_strings():
    given = rs.EngineOptions(softmax="online")
    assert engine_options(given, softmax="two_phase") is given
    built = engine_options("plain", numerics="exact")
    assert (built.engine, built.numerics) == ("plain", "exact")

