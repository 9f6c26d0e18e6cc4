"""The layouts: a case reaches the kernel in the layout's shapes and names and comes back
the same; the kind of a function is detected; functions load by name or by path."""

from __future__ import annotations

import numpy as np
import pytest

from routing_sim.errors import InvalidArgumentError
from routing_sim.testing.calling import (
    arguments,
    call,
    case_from_call,
    detect,
    load_function,
    reproducer,
)
from routing_sim.testing.cases import FEATURES, battery, check_features
from tests.testing import kernels

EVERY = frozenset(f for f in FEATURES if f != "backward")


def _same(one, other):
    for name in ("query", "key", "value", "mask", "alibi", "sinks", "dropout_mask"):
        a, b = getattr(one, name), getattr(other, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)),
                                          np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape)))
    for name in ("dtype", "scale", "causal", "window", "softcap", "dropout_p", "lse"):
        assert getattr(one, name) == getattr(other, name), name
    assert (one.cu_seqlens is None) == (other.cu_seqlens is None)


@pytest.mark.parametrize("layout, kind", [("sdpa", "numpy"), ("flash", "numpy"),
                                          ("sdpa", "torch"), ("flash", "torch")])
def test_a_case_goes_to_the_kernel_and_comes_back_the_same(layout, kind):
    if kind == "torch":
        pytest.importorskip("torch")
    chosen = EVERY - ({"mask", "bottom_right"} if layout == "flash" else set())
    for case in battery(chosen, layout, "float64"):
        args, kwargs = arguments(case, layout, kind)
        _same(case, case_from_call(*args, layout=layout, **kwargs))


def test_the_layouts_shapes_and_names():
    case = next(c for c in battery(check_features("full, gqa, causal", "flash"), "flash", "float64")
                if c.shape[:3] == (2, 4, 2))
    (q, k, v), kwargs = arguments(case, "flash", "numpy")
    batch, heads, kv_heads, n_queries, n_keys, dim, _ = case.shape
    assert q.shape == (batch, n_queries, heads, dim) and k.shape == (batch, n_keys, kv_heads, dim)
    (q, k, v), kwargs = arguments(case, "sdpa", "numpy")
    assert q.shape == (batch, heads, n_queries, dim) and kwargs["enable_gqa"] is True
    varlen = next(c for c in battery(check_features("varlen", "flash"), "flash", "float64")
                  if c.cu_seqlens is not None)
    (q, k, v), kwargs = arguments(varlen, "flash", "numpy")
    assert q.shape == (varlen.shape[3], varlen.shape[1], varlen.shape[5])
    assert kwargs["cu_seqlens_q"].dtype == np.int32 and kwargs["max_seqlen_q"] == 5


def test_the_kind_of_a_function_is_detected():
    torch = pytest.importorskip("torch")
    assert detect(kernels.sdpa, "sdpa") == "numpy"
    assert detect(torch.nn.functional.scaled_dot_product_attention, "sdpa") == "torch"


def test_a_kernel_that_raises_or_returns_the_wrong_shape_is_an_outcome_not_a_crash():
    case = battery(check_features("full", "sdpa"), "sdpa", "float64")[0]

    def raises(q, k, v):
        raise RuntimeError("no kernel for this shape")

    assert call(raises, case, "sdpa", "numpy").error == \
        "raised RuntimeError: no kernel for this shape"
    transposed = call(lambda q, k, v: kernels.sdpa(q, k, v).swapaxes(1, 2), case, "sdpa", "numpy")
    assert transposed.error is not None and transposed.error.startswith("returned shape")


def test_functions_load_by_module_or_by_path(tmp_path):
    assert load_function("tests.testing.kernels:flash") is kernels.flash
    path = tmp_path / "mine.py"
    path.write_text("def attention(q, k, v):\n    return v\n")
    assert load_function(f"{path}:attention").__name__ == "attention"
    for spec, message in (("nocolon", "MODULE:FUNCTION"), (f"{path}:missing", "cannot load"),
                          ("no/such.py:f", "no file")):
        with pytest.raises(InvalidArgumentError, match=message):
            load_function(spec)


def test_a_reproducer_rebuilds_the_arrays_exactly():
    torch = pytest.importorskip("torch")
    case = next(c for c in battery(check_features("full, mask", "sdpa"), "sdpa", "bfloat16")
                if c.mask is not None and c.mask.dtype != bool)
    code = reproducer(case, "sdpa", "torch", None)
    scope: dict = {}
    exec(compile(code.split("actual =")[0], "<reproducer>", "exec"), scope)
    assert scope["q"].dtype == torch.bfloat16
    np.testing.assert_array_equal(scope["q"].double().numpy(), case.query)
    np.testing.assert_array_equal(scope["kwargs"]["attn_mask"].double().numpy(), case.mask)


def test_only_the_keywords_saying_causal_to_a_causal_only_kernel_without_them_are_left_out():
    from routing_sim.testing.calling import leaving_out, unstated

    def causal_only(q, k, v, scale=None):
        return q

    def takes_all(q, k, v, **kwargs):
        return q

    assert unstated(causal_only, frozenset({"causal"}), "sdpa") == {"is_causal"}
    assert unstated(causal_only, frozenset({"causal"}), "flash") == {"causal"}
    assert unstated(causal_only, frozenset({"bottom_right"}), "sdpa") == \
        {"is_causal", "causal_alignment", "attn_mask"}
    assert unstated(causal_only, frozenset({"causal", "full"}), "sdpa") == frozenset()
    assert unstated(causal_only, frozenset({"window"}), "flash") == frozenset()
    assert unstated(takes_all, frozenset({"causal"}), "sdpa") == frozenset()
    calls = []
    called = leaving_out(lambda *args, **kwargs: calls.append(kwargs), frozenset({"is_causal"}))
    called(1, is_causal=True, scale=0.5)
    assert calls == [{"scale": 0.5}]
