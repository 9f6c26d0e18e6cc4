"""induction_heads: the roles, recomputed here from the trained weights, over two seeds.

The routing shares are recomputed in plain numpy from ``model.embedding``, ``positions`` and
each layer's ``W_q``, ``W_k``, ``W_v``, ``W_o``, and each token's earlier occurrence is found
by searching the token ids, never through the scenario's own helpers. The scenario has no
golden file: its printed digits depend on the machine's BLAS (test_scenarios.py, TRAINED).
"""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.scenarios import induction_heads as ih


@pytest.fixture(scope="module", params=[1, 2])
def result(request) -> ih.Training:
    return ih.train(seed=request.param)


def routing(model: ih.Model, tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Each layer's shares ``(B, H, L, L)`` and the logits ``(B, L, V)``, computed here."""
    n = tokens.shape[1]
    stream = model.embedding[tokens] + model.positions[:n]                 # (B, L, D)
    allowed = np.tril(np.ones((n, n), dtype=bool))                         # causal
    shares = []
    for layer in model.layers:
        q, k, v = (np.einsum("bld,hde->bhle", stream, w)
                   for w in (layer.W_q, layer.W_k, layer.W_v))            # (B, H, L, d)
        scores = np.einsum("bhle,bhme->bhlm", q, k) / np.sqrt(q.shape[-1])  # (B, H, L, L)
        scores = np.where(allowed, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        shares.append(weights)
        stream = stream + np.einsum("bhlm,bhme,hed->bld", weights, v, layer.W_o)
    return shares, stream @ model.unembedding


def copy_routes(tokens: np.ndarray) -> list[tuple[int, int, int]]:
    """(sequence, token i, earlier occurrence p) wherever the next id can be copied: the
    token at i appeared before at p, and the token after i is the one after p."""
    routes = []
    for b, row in enumerate(tokens.tolist()):
        for i in range(1, len(row) - 1):
            earlier = [p for p in range(i) if row[p] == row[i]]
            if earlier and row[earlier[-1] + 1] == row[i + 1]:
                routes.append((b, i, earlier[-1]))
    return routes


def role_scores(result: ih.Training) -> tuple[np.ndarray, np.ndarray]:
    """(H,) previous-token share per layer-1 head, at the tokens after each earlier
    occurrence; (H,) induction share per layer-2 head, on the route i -> p + 1."""
    shares, _ = routing(result.model, result.held_out.tokens)
    b, i, p = (np.array(column) for column in zip(*copy_routes(result.held_out.tokens)))
    previous = shares[0][b, :, p + 1, p].mean(axis=0)
    induction = shares[1][b, :, i, p + 1].mean(axis=0)
    return previous, induction


def test_a_layer_1_head_routes_to_the_previous_token(result):
    previous, _ = role_scores(result)
    assert previous.max() >= 0.9, previous


def test_a_layer_2_head_routes_to_the_token_after_the_earlier_occurrence(result):
    _, induction = role_scores(result)
    assert induction.max() >= 0.9, induction


def test_the_scenario_measures_the_same_roles(result):
    previous, induction = role_scores(result)
    held = result.held_out
    np.testing.assert_allclose(ih.previous_token_share(result.weights[0], held), previous,
                               rtol=1e-12)
    np.testing.assert_allclose(ih.induction_share(result.weights[1], held), induction,
                               rtol=1e-12)


def test_two_layers_copy_and_one_layer_of_as_many_weights_does_not(result):
    _, logits = routing(result.model, result.held_out.tokens)
    _, baseline_logits = routing(result.baseline, result.held_out.tokens)
    b, i, p = (np.array(column) for column in zip(*copy_routes(result.held_out.tokens)))
    target = result.held_out.tokens[b, i + 1]
    accuracy = (logits[b, i].argmax(-1) == target).mean()
    baseline = (baseline_logits[b, i].argmax(-1) == target).mean()
    assert accuracy >= 0.9 and baseline <= 0.3, (accuracy, baseline)
    assert result.accuracy == pytest.approx(accuracy, abs=2 / len(b))    # messages vs here
    assert result.baseline_accuracy == pytest.approx(baseline, abs=2 / len(b))
    counts = [sum(w.size for w in model.parameters().values())
              for model in (result.model, result.baseline)]
    assert counts[0] == counts[1] and len(result.baseline.layers) == 1


def test_the_loss_falls_for_two_layers_only(result):
    assert np.mean(result.losses[-20:]) < 0.1 * result.losses[0]
    assert np.mean(result.baseline_losses[-20:]) > 0.4 * result.baseline_losses[0]


def test_forward_weights_equal_rs_attention_on_the_same_queries_and_keys(result):
    tokens = result.held_out.tokens[:8]
    logits, weights = result.model.forward(tokens, return_weights=True)  # as messages
    stream = result.model.embedding[tokens] + result.model.positions     # (B, L, D)
    for layer, shares in zip(result.model.layers, weights):
        q, k, v = (np.einsum("bld,hde->bhle", stream, w)
                   for w in (layer.W_q, layer.W_k, layer.W_v))
        output, expected = rs.attention(q, k, v, is_causal=True, return_weights=True)
        np.testing.assert_allclose(shares, expected, rtol=1e-12, atol=1e-300)
        stream = stream + np.einsum("bhle,hed->bld", output, layer.W_o)
    np.testing.assert_allclose(logits, stream @ result.model.unembedding, rtol=1e-10)
    matrix = result.model.forward(tokens, engine="matrix")
    np.testing.assert_allclose(logits, matrix, rtol=1e-10)


def test_two_runs_with_one_seed_are_bit_identical():
    first, second = ih.train(seed=3, steps=3), ih.train(seed=3, steps=3)
    assert first.losses == second.losses
    assert first.baseline_losses == second.baseline_losses
    for model, again in ((first.model, second.model), (first.baseline, second.baseline)):
        for name, array in model.parameters().items():
            np.testing.assert_array_equal(array, again.parameters()[name])
    assert first.accuracy == second.accuracy
    assert first.losses != ih.train(seed=4, steps=3).losses


def test_each_sequence_repeats_one_segment_and_nothing_else():
    sequences = ih.repeats(np.random.default_rng(5), 200)
    for b, row in enumerate(sequences.tokens):
        values, counts = np.unique(row, return_counts=True)
        twice = set(values[counts == 2].tolist())
        a, c, m = sequences.first[b], sequences.second[b], sequences.length[b]
        assert ih.SHORTEST <= m <= ih.LONGEST and a + m <= c
        assert counts.max() == 2 and twice == set(row[a:a + m].tolist())
        np.testing.assert_array_equal(row[a:a + m], row[c:c + m])
    expected = np.zeros(sequences.tokens.shape, dtype=bool)
    for b, i, _ in copy_routes(sequences.tokens):
        expected[b, i] = True
    np.testing.assert_array_equal(sequences.copied, expected)
    b, i, source = sequences.copy_routes
    assert [(x, y, z - 1) for x, y, z in zip(b.tolist(), i.tolist(), source.tolist())] == (
        copy_routes(sequences.tokens))


def test_the_gradients_are_the_derivative_of_the_loss():
    rng = np.random.default_rng(0)
    model = ih.initial(rng, layers=2, heads=ih.HEADS)
    batch = ih.repeats(rng, 4)

    def loss() -> float:
        logits, _, _ = ih._forward(model, batch.tokens, "matrix")
        return ih._loss_and_gradient(logits, batch)[0]

    logits, passes, top = ih._forward(model, batch.tokens, "matrix")
    _, d_logits = ih._loss_and_gradient(logits, batch)
    grads = ih._backward(model, batch.tokens, passes, top, d_logits)
    assert grads.keys() == model.parameters().keys()
    step = 1e-6
    for name, weight in model.parameters().items():
        direction = rng.normal(size=weight.shape)
        weight += step * direction
        plus = loss()
        weight -= 2 * step * direction
        minus = loss()
        weight += step * direction
        assert (plus - minus) / (2 * step) == pytest.approx((grads[name] * direction).sum(),
                                                            rel=1e-6, abs=1e-9), name


def test_the_loss_is_the_cross_entropy_of_the_copyable_tokens():
    rng = np.random.default_rng(1)
    batch = ih.repeats(rng, 3)
    logits = rng.normal(size=(3, ih.LENGTH, ih.VOCAB))
    loss, _ = ih._loss_and_gradient(logits, batch)
    terms = [np.log(np.exp(logits[b, i]).sum()) - logits[b, i, batch.tokens[b, i + 1]]
             for b, i, _ in copy_routes(batch.tokens)]
    assert loss == pytest.approx(np.mean(terms), rel=1e-12)


@pytest.mark.parametrize("tokens, error", [
    (np.arange(5), rs.ShapeError),
    (np.zeros((1, ih.LENGTH + 1), dtype=int), rs.ShapeError),
    (np.full((1, 4), ih.VOCAB), rs.InvalidArgumentError),
    (np.full((1, 4), -1), rs.InvalidArgumentError),
    (np.zeros((1, 4)), rs.InvalidArgumentError),
])
def test_forward_refuses_tokens_it_cannot_embed(tokens, error):
    model = ih.initial(np.random.default_rng(0), layers=1, heads=1)
    with pytest.raises(error, match="tokens"):
        model.forward(tokens)


def test_forward_refuses_an_unknown_engine():
    model = ih.initial(np.random.default_rng(0), layers=1, heads=1)
    with pytest.raises(rs.InvalidArgumentError, match="engine.*'gpu'"):
        model.forward(np.zeros((1, 3), dtype=int), engine="gpu")


def test_the_scenario_prints_both_layers_and_writes_a_page_per_layer(result, capsys, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(ih, "train", lambda seed=0: result)
    ih.main(str(tmp_path / "induction.html"))
    printed = capsys.readouterr().out
    for section in ("layer 1: where each token", "layer 2: where each token", "token id",
                    "copying accuracy", "1 layer x 4 heads", "stand for nothing"):
        assert section in printed
    for layer in (1, 2):
        page = (tmp_path / f"induction-layer{layer}.html").read_text(encoding="utf-8")
        assert page.count('data-role="routing-table"') == 1
    assert printed.rstrip().splitlines()[-2:] == [
        f"layer {layer}: verdict: EQUAL to matrix attention (within the float tolerance)"
        for layer in (1, 2)]
