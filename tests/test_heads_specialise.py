"""heads_specialise: a shortened training on a fixed seed splits the relations among the heads.

The scenario's printed numbers are not asserted (its golden file is left out on purpose,
see test_scenarios.py); these tests recompute the properties from the trained layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from routing_sim.scenarios import heads_specialise as hs

SHORT = 120          # steps: a few seconds; the full scenario trains for hs.STEPS


@pytest.fixture(scope="module")
def result() -> hs.Training:
    return hs.train(seed=0, steps=SHORT)


def head_shares(layer, batch: np.ndarray, relations: dict[str, np.ndarray]) -> np.ndarray:
    """(H, R) computed here from the layer's weights: the mean weight on each relation's route."""
    _, weights = layer(batch, batch, batch, average_attn_weights=False)   # (B, H, L, S)
    table = np.empty((weights.shape[1], len(relations)))
    for r, routes in enumerate(relations.values()):
        routes = np.broadcast_to(routes, weights[:, 0].shape)              # (B, L, S)
        for head in range(weights.shape[1]):
            table[head, r] = weights[:, head][routes].mean()
    return table


def test_relations_mark_one_route_per_token_that_fits_the_sentence(result):
    x, relations = result.batch, result.relations
    tokens = np.arange(hs.TOKENS)
    assert relations["previous token"][tokens, (tokens - 1) % hs.TOKENS].all()
    assert relations["next token"][tokens, (tokens + 1) % hs.TOKENS].all()
    for routes in relations.values():
        assert (np.broadcast_to(routes, (len(x), hs.TOKENS, hs.TOKENS)).sum(-1) == 1).all()
    batch, query, key = np.nonzero(relations["named token"])
    own = x[..., hs.CONTENT:hs.CONTENT + hs.NAMES]
    asked = x[..., hs.CONTENT + hs.NAMES:hs.CONTENT + 2 * hs.NAMES]
    np.testing.assert_array_equal(own[batch, key], asked[batch, query])
    assert not relations["named token"][:, tokens, tokens].any()


def test_each_head_puts_most_of_its_budget_on_one_relation(result):
    share = head_shares(result.model, result.batch, result.relations)
    assert share.max(axis=1).min() >= 0.8, share


def test_distinct_heads_take_distinct_relations(result):
    share = head_shares(result.model, result.batch, result.relations)
    assert sorted(share.argmax(axis=1)) == [0, 1, 2], share
    assert hs.match(share) == tuple(share.argmax(axis=1))


def test_the_untrained_heads_follow_no_relation(result):
    share = head_shares(result.untrained, result.batch, result.relations)
    assert share.max() < 0.3, share


def test_the_loss_falls_to_a_small_fraction(result):
    assert np.mean(result.losses[-10:]) < 0.05 * result.losses[0]


def test_one_head_of_the_same_width_learns_only_part(result):
    assert result.baseline.num_heads == 1
    assert result.baseline.embed_dim == result.model.embed_dim
    assert np.mean(result.baseline_losses[-10:]) > 0.4 * result.baseline_losses[0]
    assert np.mean(result.baseline_losses[-10:]) > 10 * np.mean(result.losses[-10:])


def test_two_runs_with_one_seed_are_bit_identical():
    first, second = hs.train(seed=3, steps=4), hs.train(seed=3, steps=4)
    assert first.losses == second.losses
    assert first.baseline_losses == second.baseline_losses
    for name, array in first.model.state_dict().items():
        np.testing.assert_array_equal(array, second.model.state_dict()[name])
    np.testing.assert_array_equal(first.history, second.history)
    np.testing.assert_array_equal(first.batch, second.batch)
    assert first.losses != hs.train(seed=4, steps=4).losses


def test_match_maximises_the_total_share_not_each_row():
    share = np.array([[0.6, 0.5, 0.0],
                      [0.9, 0.1, 0.0],
                      [0.0, 0.2, 0.8]])
    assert hs.match(share) == (1, 0, 2)


def test_the_loss_gradient_is_the_derivative_of_the_loss():
    rng = np.random.default_rng(0)
    output, target = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 4))
    loss, d_output = hs.loss_and_gradient(output, target)
    assert loss == pytest.approx(((output[..., :4] - target) ** 2).sum() / (2 * target.size))
    assert (d_output[..., 4:] == 0).all()
    direction, step = rng.normal(size=output.shape), 1e-6
    plus, _ = hs.loss_and_gradient(output + step * direction, target)
    minus, _ = hs.loss_and_gradient(output - step * direction, target)
    assert (plus - minus) / (2 * step) == pytest.approx((d_output * direction).sum(), rel=1e-6)


def test_the_scenario_prints_its_sections_and_a_verdict(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "heads.png"
    hs.main(str(figure), seed=1, steps=3)
    printed = capsys.readouterr().out
    for section in ("before training", "after training", "matched to", "one head",
                    "loss, 3 heads"):
        assert section in printed
    assert printed.rstrip().splitlines()[-1] == (
        "verdict: EQUAL to matrix attention (within the float tolerance)")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
