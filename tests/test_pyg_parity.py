"""Optional: simulate(graph=G) against PyTorch Geometric's TransformerConv (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs

torch = pytest.importorskip("torch")
pyg_nn = pytest.importorskip("torch_geometric.nn")


@pytest.mark.parametrize("seed", range(5))
def test_transformer_conv_is_simulate_on_its_graph(seed):
    rng = np.random.default_rng(seed)
    n_nodes, features, heads, channels = 9, 6, 3, 4
    torch.manual_seed(seed)
    conv = pyg_nn.TransformerConv(features, channels, heads=heads, root_weight=False).double()
    mask = rng.random((n_nodes, n_nodes)) < 0.3            # mask[i, j]: i pulls from j
    mask[0] = False                                        # a node nobody feeds
    graph = rs.graphs.from_mask(mask)
    edge_index = torch.tensor(np.array(list(graph.edges())).T)   # row 0: source j, row 1: i
    x = rng.normal(size=(n_nodes, features))
    expected = conv(torch.from_numpy(x), edge_index).detach().numpy()

    def project(linear) -> np.ndarray:
        weight, bias = linear.weight.detach().numpy(), linear.bias.detach().numpy()
        return (x @ weight.T + bias).reshape(n_nodes, heads, channels).transpose(1, 0, 2)

    run = rs.simulate(project(conv.lin_query), project(conv.lin_key), project(conv.lin_value),
                      graph=graph, network=rs.Network(jitter=0.5, seed=seed))
    output = run.output.transpose(1, 0, 2).reshape(n_nodes, heads * channels)
    # Roundings apart (PyG divides by sqrt(C), sums in edge order): its 1e-16 in the softmax
    # denominator never shows, the denominator being >= 1 once the row max is subtracted.
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    assert not output[0].any()


def test_transformer_conv_passes_the_oracle_on_its_features():
    """docs/testing_reports.py's adapter (the graph built from the routes) through the
    oracle's battery; the same adapter with bottom-right causal read as top-left fails."""
    from docs.testing_reports import PYG_FEATURES, pyg_transformer_conv

    report = rs.testing.check_attention(pyg_transformer_conv, features=PYG_FEATURES, cases=0)
    assert report.passed, str(report)

    def top_left(q, k, v, **kwargs):
        return pyg_transformer_conv(q, k, v, **{**kwargs, "causal_alignment": "top_left"})

    broken = rs.testing.check_attention(top_left, features=["bottom_right"], cases=0)
    assert not broken.passed
