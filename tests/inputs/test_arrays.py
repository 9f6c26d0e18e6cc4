"""PyTorch tensors that track gradients get a project error that says what to do."""

from __future__ import annotations

import numpy as np
import pytest

import routing_sim as rs

torch = pytest.importorskip("torch")


def tracked(*shape: int):
    return torch.ones(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("argument", ["query", "key", "value"])
@pytest.mark.parametrize("entry", [rs.attention, rs.simulate])
def test_a_tensor_that_requires_grad_is_a_dtype_error(entry, argument):
    arrays = {"query": np.ones((2, 3)), "key": np.ones((2, 3)), "value": np.ones((2, 3))}
    arrays[argument] = tracked(2, 3)
    with pytest.raises(rs.DTypeError, match=rf"^{argument} is a tensor that requires grad; "
                                            rf"pass {argument}\.detach\(\).*Run\.backward"):
        entry(**arrays)


def test_detached_tensors_are_taken():
    q = tracked(2, 3)
    out = rs.attention(q.detach(), q.detach(), q.detach())
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_masks_and_upstream_gradients_are_checked_too():
    x = np.ones((2, 3))
    with pytest.raises(rs.DTypeError, match="attn_mask"):
        rs.attention(x, x, x, attn_mask=tracked(2, 2))
    with pytest.raises(rs.DTypeError, match="d_output"):
        rs.attention_backward(x, x, x, tracked(2, 3))
    mha = rs.MultiHeadAttention(4, 2, seed=0)
    with pytest.raises(rs.DTypeError, match="query"):
        mha(tracked(3, 4), np.ones((3, 4)), np.ones((3, 4)))
