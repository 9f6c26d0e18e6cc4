"""``attention_backward(..., d_lse=...)`` (reference/matrix.py, segments.py): a loss that
reads the log-sum-exp, ``<dO, out> + <d_lse, lse>``, against torch autograd of the same
loss written here from its definition in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing_sim as rs

RTOL = 1e-10


def allowed_routes(kind: str, n_queries: int, n_keys: int, rng, lengths=None) -> np.ndarray:
    """The routes ``(L, S)`` each option allows, written from its meaning."""
    i, j = np.arange(n_queries)[:, None], np.arange(n_keys)[None, :]
    if kind == "bool":
        return rng.random((n_queries, n_keys)) < 0.6
    if kind == "causal":                                   # top-left
        return j <= i
    if kind == "window":                                   # (1, 0), aligned bottom-right
        at = i + n_keys - n_queries
        return (j >= at - 1) & (j <= at)
    if kind == "varlen":                                   # packed, causal bottom-right each
        allowed = np.zeros((n_queries, n_keys), dtype=bool)
        (q_lens, k_lens) = lengths
        q_at, k_at = np.cumsum([0, *q_lens]), np.cumsum([0, *k_lens])
        for b in range(len(q_lens)):
            rows = np.arange(q_lens[b])[:, None] + k_lens[b] - q_lens[b]
            allowed[q_at[b]:q_at[b + 1], k_at[b]:k_at[b + 1]] = \
                np.arange(k_lens[b])[None, :] <= rows
        return allowed
    return np.ones((n_queries, n_keys), dtype=bool)


def options_for(kind: str, allowed: np.ndarray, lengths) -> dict:
    """The same routes as routing_sim's keywords."""
    if kind == "bool":
        return {"attn_mask": allowed}
    if kind == "causal":
        return {"is_causal": True}
    if kind == "window":
        return {"window_size": (1, 0)}
    if kind == "varlen":
        q_lens, k_lens = lengths
        return {"cu_seqlens_q": np.cumsum([0, *q_lens]), "cu_seqlens_k": np.cumsum([0, *k_lens]),
                "is_causal": True, "causal_alignment": "bottom_right"}
    return {}


def torch_gradients(q, k, v, d_output, d_lse, allowed, scale, sinks=None, softcap=None,
                    keep=None, dropout_p=0.0):
    """dQ, dK, dV (and d_sinks) of ``Σ dO ⊙ out + Σ d_lse ⊙ lse`` by torch autograd; a row
    with nothing in its softmax contributes nothing to either sum."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
    tq, tk, tv = tensors
    group = q.shape[0] // k.shape[0]
    tk, tv = tk.repeat_interleave(group, 0), tv.repeat_interleave(group, 0)   # GQA
    scores = tq @ tk.transpose(-1, -2) * scale                         # (H, L, S)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~torch.tensor(allowed), -torch.inf)
    if sinks is not None:
        tsinks = torch.tensor(sinks, requires_grad=True)
        tensors.append(tsinks)
        column = tsinks[:, None, None].expand(-1, scores.shape[1], 1)
        scores = torch.cat([scores, column], dim=-1)                   # (H, L, S + 1)
    live = torch.isfinite(scores).any(-1, keepdim=True)                # (H, L, 1)
    safe = torch.where(live, scores, torch.zeros_like(scores))         # no -inf - -inf
    weights = torch.softmax(safe, -1) * live                           # (H, L, S [+1])
    lse = torch.logsumexp(safe, -1) * live[..., 0]                     # (H, L)
    if sinks is not None:
        weights = weights[..., :-1]
    if keep is not None:
        weights = weights * torch.tensor(keep) / (1 - dropout_p)
    out = weights @ tv                                                 # (H, L, Ev)
    loss = (out * torch.tensor(d_output)).sum() + (lse * torch.tensor(d_lse)).sum()
    loss.backward()
    return [t.grad.numpy() for t in tensors]


@st.composite
def lse_problems(draw):
    """Inputs (H, L, E) with every feature the lse's gradient passes through."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["none", "bool", "causal", "window", "varlen"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    lengths = None
    if kind == "varlen":
        q_lens = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        k_lens = [n + draw(st.integers(0, 2)) for n in q_lens]
        lengths = (q_lens, k_lens)
        n_queries, n_keys = sum(q_lens), sum(k_lens)
    else:
        n_queries, n_keys = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dim, value_dim = draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 3))
    q = rng.normal(size=(heads, n_queries, dim)) * 2
    k = rng.normal(size=(kv_heads, n_keys, dim)) * 2
    v = rng.normal(size=(kv_heads, n_keys, value_dim))
    allowed = allowed_routes(kind, n_queries, n_keys, rng, lengths)
    options = {**options_for(kind, allowed, lengths), "enable_gqa": kv_heads != heads,
               "scale": draw(st.sampled_from([None, 0.7]))}
    if draw(st.booleans()):
        options["sinks"] = rng.normal(size=heads)
    if draw(st.booleans()):
        options["softcap"] = 1.5
    if draw(st.booleans()):
        options["dropout_p"] = 0.4
        options["dropout_mask"] = rng.random((heads, n_queries, n_keys)) >= 0.4
    d_output = rng.normal(size=(heads, n_queries, value_dim))
    d_lse = rng.normal(size=(heads, n_queries))
    return (q, k, v), allowed, options, d_output, d_lse


def expected_for(inputs, allowed, options, d_output, d_lse):
    q = inputs[0]
    scale = options["scale"] or 1 / np.sqrt(q.shape[-1])
    return torch_gradients(*inputs, d_output, d_lse, allowed, scale, options.get("sinks"),
                           options.get("softcap"), options.get("dropout_mask"),
                           options.get("dropout_p", 0.0))


def assert_close(actual, expected) -> None:
    """Within RTOL of the largest gradient entry: a sum of terms of both signs cancels."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL,
                               atol=RTOL * max(np.abs(expected).max(), 1.0))


@given(lse_problems())
@settings(max_examples=60, deadline=None)
def test_lse_gradient_matches_torch_autograd(case):
    inputs, allowed, options, d_output, d_lse = case
    got = rs.attention_backward(*inputs, d_output, d_lse=d_lse, **options)
    expected = expected_for(inputs, allowed, options, d_output, d_lse)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert_close(ours, theirs)


@given(lse_problems())
@settings(max_examples=30, deadline=None)
def test_a_route_set_gives_the_dense_gradients(case):
    """The segment path (a RouteSet) and the dense one compute the same lse term."""
    inputs, allowed, options, d_output, d_lse = case
    if any(name in options for name in ("cu_seqlens_q", "window_size")):
        return                                  # already sparse: nothing to compare
    dense = {name: value for name, value in options.items()
             if name not in ("attn_mask", "is_causal")}
    graph = rs.RouteSet.from_mask(allowed)
    sparse = rs.attention_backward(*inputs, d_output, d_lse=d_lse, graph=graph, **dense)
    full = rs.attention_backward(*inputs, d_output, d_lse=d_lse, attn_mask=allowed, **dense)
    for a, b in zip(sparse, full):
        assert_close(a, b)


def test_only_lse_in_the_loss_gives_the_softmax_as_score_gradient():
    """With dO = 0 the score gradient is P ⊙ d_lse: dQ = scale · (P ⊙ d_lse) K, dV = 0."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 4, 3))
    d_lse = rng.normal(size=4)
    dq, dk, dv = rs.attention_backward(q, k, v, np.zeros((4, 3)), scale=0.5, d_lse=d_lse)
    scores = q @ k.T * 0.5
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(dq, 0.5 * (p * d_lse[:, None]) @ k, rtol=1e-12)
    np.testing.assert_allclose(dk, 0.5 * (p * d_lse[:, None]).T @ q, rtol=1e-12)
    assert not dv.any()


@pytest.mark.parametrize("graph", [False, True])
def test_a_row_with_no_route_gives_its_d_lse_to_its_sink_or_nothing(graph):
    """Row 1 reaches no key: its lse is the sink's logit, d lse / d sink = 1; without
    sinks its lse is -inf and its d_lse goes nowhere."""
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 2, 3, 2))
    allowed = np.array([[True, True, False], [False, False, False], [True, False, True]])
    routes = {"graph": rs.RouteSet.from_mask(allowed)} if graph else {"attn_mask": allowed}
    d_lse = np.zeros((2, 3))
    d_lse[:, 1] = [2.0, -3.0]
    zero = np.zeros((2, 3, 2))
    *grads, d_sinks = rs.attention_backward(q, k, v, zero, sinks=[0.3, -0.2], d_lse=d_lse,
                                            **routes)
    np.testing.assert_array_equal(d_sinks, [2.0, -3.0])
    assert not any(g.any() for g in grads)
    grads = rs.attention_backward(q, k, v, zero, d_lse=d_lse, **routes)
    assert not any(g.any() for g in grads)


def test_every_route_dropped_still_passes_the_lse_gradient():
    """Dropout changes what a row pulls, not its lse: a row whose routes all dropped still
    gets dS = P ⊙ d_lse."""
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(3, 3, 2))
    keep = np.ones((3, 3), dtype=bool)
    keep[0] = False
    d_lse = np.array([1.0, 0.0, 0.0])
    dq, _, _ = rs.attention_backward(q, k, v, np.zeros((3, 2)), dropout_p=0.5,
                                     dropout_mask=keep, d_lse=d_lse)
    expected = torch_gradients(q[None], k[None], v[None], np.zeros((1, 3, 2)), d_lse[None],
                               np.ones((3, 3), dtype=bool), 1 / np.sqrt(2), keep=keep,
                               dropout_p=0.5)[0][0]
    assert np.abs(dq[0]).max() > 1e-3
    assert_close(dq, expected)


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 4)), np.ones((2, 3, 1))])
def test_a_d_lse_of_the_wrong_shape_is_named(bad):
    q, k, v = np.ones((3, 2, 3, 2))
    with pytest.raises(rs.ShapeError, match=r"d_lse must have the log-sum-exp's shape \(2, 3\)"):
        rs.attention_backward(q, k, v, np.ones((2, 3, 2)), d_lse=bad)


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [np.inf, 0.0], ["a", "b"]])
def test_a_non_finite_d_lse_is_refused(bad):
    q, k, v = np.ones((3, 2, 2))
    with pytest.raises(rs.InvalidArgumentError, match="d_lse must hold finite real numbers"):
        rs.attention_backward(q, k, v, np.ones((2, 2)), d_lse=np.array(bad))
