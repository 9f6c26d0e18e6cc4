"""``MultiHeadAttention``: nn.MultiheadAttention's weights and semantics, run as messages.

After the class: its weights under PyTorch's key names, their initial values
(:func:`initial_weights`) and the checks a loaded state dict must pass
(:func:`checked_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InvalidArgumentError, ShapeError
from ..inputs.arrays import as_numpy
from ..inputs.masks import checked_upstream, mha_route_mask
from ..options import MHA_ENGINES, MhaEngine, check_choice
from ..reference.matrix import attention, attention_backward
from ..results.run import WEIGHTS_LIMIT
from ..simulation import simulate

__all__ = ["MultiHeadAttention", "checked_weights", "initial_weights"]


# Arguments of attention that the module sets itself, and what to use instead.
OWN_OPTIONS = {"enable_gqa": "grouped-query attention follows num_kv_heads",
               "return_weights": "use need_weights",
               "return_lse": "it returns (output, weights) as nn.MultiheadAttention does; "
                             "last_run.lse (engine='messages') has each head's log-sum-exp"}


class MultiHeadAttention:
    r"""Multi-head attention with PyTorch's ``nn.MultiheadAttention`` layout (batch_first).

    .. math:: \mathrm{out} = \mathrm{concat}_h\big(\mathrm{attention}(Q W_q^{h\top},
              K W_k^{h\top}, V W_v^{h\top})\big) W_o^\top + b_o

    Each head is a routing strategy of its own over the same tokens; with
    ``engine="messages"`` every head's routes run as messages in one simulation
    (:func:`~routing_sim.simulate`), with ``engine="matrix"`` through
    :func:`~routing_sim.attention`. Both give the same numbers.

    Parameters
    ----------
    embed_dim, num_heads : int
        Model width E and number of query heads H (E must divide by H).
    kdim, vdim : int, optional
        Feature dims of ``key`` and ``value`` inputs (default E). When either differs from
        E, the projections are separate (``q_proj_weight`` ...) instead of ``in_proj_weight``.
    bias : bool
        Learn ``in_proj_bias`` and ``out_proj.bias``.
    add_bias_kv : bool
        Learn ``bias_k`` and ``bias_v``: one extra key/value token every query may pull from.
    add_zero_attn : bool
        Append one all-zero key/value token (a route whose value is nothing).
    num_kv_heads : int, optional
        Grouped-query attention: H / num_kv_heads query heads share each key/value head.
        Not in PyTorch's module; with it the projections are separate.
    seed : int
        Seed of the initial weights (PyTorch's initialisation scheme).

    Examples
    --------
    >>> mha = MultiHeadAttention(8, 2, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(1, 5, 8))
    >>> out, weights = mha(x, x, x)
    >>> out.shape, weights.shape
    ((1, 5, 8), (1, 5, 5))
    >>> matrix, _ = mha(x, x, x, engine="matrix")
    >>> bool(np.allclose(out, matrix, rtol=1e-12, atol=1e-12))
    True
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, add_bias_kv: bool = False,
                 add_zero_attn: bool = False, num_kv_heads: int | None = None,
                 seed: int = 0) -> None:
        self.embed_dim = _positive("embed_dim", embed_dim)
        self.num_heads = _positive("num_heads", num_heads)
        self.kdim = self.embed_dim if kdim is None else _positive("kdim", kdim)
        self.vdim = self.embed_dim if vdim is None else _positive("vdim", vdim)
        self.num_kv_heads = self.num_heads if num_kv_heads is None else _positive(
            "num_kv_heads", num_kv_heads)
        if self.embed_dim % self.num_heads:
            raise InvalidArgumentError(f"embed_dim {self.embed_dim} is not divisible by "
                                       f"num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise InvalidArgumentError(f"num_heads {self.num_heads} is not a multiple of "
                                       f"num_kv_heads {self.num_kv_heads}")
        self.head_dim = self.embed_dim // self.num_heads
        self.add_zero_attn = bool(add_zero_attn)
        self.packed = self.kdim == self.vdim == self.embed_dim and \
            self.num_kv_heads == self.num_heads
        self.last_run = None
        self._parameters = initial_weights(np.random.default_rng(seed), self.embed_dim,
                                           self.kv_dim, self.kdim, self.vdim, self.packed,
                                           bool(bias), bool(add_bias_kv))

    @property
    def kv_dim(self) -> int:
        """Width of the projected keys and values: num_kv_heads · head_dim."""
        return self.num_kv_heads * self.head_dim

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights under PyTorch's key names (copies)."""
        return {name: array.copy() for name, array in self._parameters.items()}

    def load_state_dict(self, mapping: Mapping[str, object]) -> None:
        """Load weights by PyTorch's key names; values may be anything numpy can convert.

        A torch ``state_dict()`` works as it is (routing_sim never imports torch).

        Raises
        ------
        InvalidArgumentError
            Missing or unexpected keys (named).
        ShapeError
            A value of the wrong shape (the key and both shapes are named).
        """
        self._parameters = checked_weights(mapping, self._parameters)

    def projections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The query, key and value projection matrices: ``(E, E)``, ``(kv, kdim)`` and
        ``(kv, vdim)``."""
        if self.packed:
            query, key, value = np.split(self._parameters["in_proj_weight"], 3)
            return query, key, value
        return (self._parameters["q_proj_weight"], self._parameters["k_proj_weight"],
                self._parameters["v_proj_weight"])

    def __call__(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                 attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False,
                 engine: str = "messages", **options):
        """Attend, as ``nn.MultiheadAttention(batch_first=True)`` does.

        Parameters
        ----------
        query : array_like, shape (N, L, E) or (L, E)
        key : array_like, shape (N, S, kdim) or (S, kdim)
        value : array_like, shape (N, S, vdim) or (S, vdim)
        key_padding_mask : array_like, shape (N, S) or (S,), optional
            Bool: True = padded key, ignored. Float: added to the scores.
        need_weights : bool
            Also return the attention weights, after dropout as ``nn.MultiheadAttention``
            returns them (before it: ``self.last_run.probabilities``, engine="messages").
        attn_mask : array_like, shape (L, S) or (N·num_heads, L, S), optional
            Bool: **True = blocked** (the opposite of SDPA). Float: added to the scores.
        average_attn_weights : bool
            Average the returned weights over heads ``(N, L, S)``; else ``(N, H, L, S)``.
        is_causal : bool
            Without ``attn_mask``: apply the causal mask. With it: a hint, as in PyTorch
            (the given mask is used as it is).
        engine : {"messages", "matrix"}
            Run the heads as messages (:func:`simulate`; the Run is kept in
            ``self.last_run``) or in matrix form.
        **options
            Passed on to :func:`simulate` / :func:`attention` (``empty_rows``, ``network``,
            ``numerics``, ...), and to the gradient engines by :meth:`gradients`: every
            argument of :func:`attention` but ``enable_gqa`` (set by ``num_kv_heads``),
            ``return_weights`` (``need_weights``) and ``return_lse`` (``last_run.lse``),
            which raise InvalidArgumentError.
            ``empty_rows="nan"`` reproduces PyTorch's NaN rows when every key of a query is
            masked and ``need_weights=True``. ``graph`` (a RouteSet over ``L`` and ``S``),
            ``mask_mod`` and ``score_mod`` work as in :func:`simulate`, with ``b`` the batch
            and ``h`` the head; a sparse run's weights are dense, so pass
            ``need_weights=False`` past :data:`~routing_sim.run.WEIGHTS_LIMIT`.

        Returns
        -------
        output : ndarray, shape (N, L, E) or (L, E)
        weights : ndarray or None
        """
        output, weights, _ = self._forward(query, key, value, key_padding_mask, need_weights,
                                           attn_mask, average_attn_weights, is_causal, engine,
                                           options)
        return output, weights

    def gradients(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
                  d_output: ArrayLike, key_padding_mask: ArrayLike | None = None,
                  need_weights: bool = True, attn_mask: ArrayLike | None = None,
                  average_attn_weights: bool = True, is_causal: bool = False,
                  engine: MhaEngine = "messages", **options: Any) -> dict[str, np.ndarray]:
        """Gradients of ``sum(output * d_output)`` for every weight and every input.

        Takes the call's arguments plus ``d_output`` (the output's shape). Returns a dict
        keyed by the state-dict names (``in_proj_weight``, ``out_proj.bias``, ``bias_k``,
        ...) and ``"query"``, ``"key"``, ``"value"`` (and ``"sinks"`` when ``sinks=`` is
        given: one logit per head). With ``engine="messages"`` the
        attention core's gradients travel back along the routes as messages
        (:meth:`Run.backward <routing_sim.Run.backward>`); with ``"matrix"`` they come from
        :func:`~routing_sim.attention_backward`. Inputs passed as the same array still get
        one gradient each (add them up for shared inputs).

        Examples
        --------
        >>> mha = MultiHeadAttention(4, 2, seed=0)
        >>> x = np.random.default_rng(1).normal(size=(3, 4))
        >>> grads = mha.gradients(x, x, x, np.ones((3, 4)))
        >>> sorted(grads)[:3], grads["in_proj_weight"].shape
        (['in_proj_bias', 'in_proj_weight', 'key'], (12, 4))
        """
        _, _, saved = self._forward(query, key, value, key_padding_mask, False, attn_mask,
                                    average_attn_weights, is_causal, engine, options)
        inputs, projected, merged, arguments, run, batched = saved
        upstream = as_numpy("d_output", d_output, np.float64)
        expected = merged.shape if batched else merged.shape[1:]
        if upstream.shape != expected:
            raise ShapeError(f"d_output must have the output's shape {expected}, got "
                             f"{upstream.shape}")
        upstream = upstream if batched else upstream[None]             # (N, L, E)
        grads: dict[str, np.ndarray] = {}
        grads["out_proj.weight"] = np.einsum("nle,nlf->ef", upstream, merged)
        if "out_proj.bias" in self._parameters:
            grads["out_proj.bias"] = upstream.sum(axis=(0, 1))
        d_merged = upstream @ self._parameters["out_proj.weight"]      # (N, L, E)
        n_batch, n_queries, _ = d_merged.shape
        d_heads = d_merged.reshape(n_batch, n_queries, self.num_heads, self.head_dim
                                   ).transpose(0, 2, 1, 3)             # (N, H, L, d)
        if run is not None:
            core = run.backward(d_heads if batched else d_heads[0])
            d_q, d_k, d_v = (d if batched else d[None] for d in (core.query, core.key,
                                                                 core.value))
            d_sinks = [] if core.sinks is None else [core.sinks]
        else:
            q, k, v = projected
            with checked_upstream():
                d_q, d_k, d_v, *d_sinks = attention_backward(q, k, v, d_heads, **arguments)
        grads.update(zip(["sinks"], d_sinks))                          # with sinks= only

        def unheads(x: np.ndarray) -> np.ndarray:                     # (N, H, T, d) -> (N, T, H·d)
            return x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)

        d_q, d_k, d_v = unheads(d_q), unheads(d_k), unheads(d_v)
        n_keys = inputs[1].shape[1]
        if "bias_k" in self._parameters:
            grads["bias_k"] = d_k[:, n_keys].sum(axis=0)[None, None]
            grads["bias_v"] = d_v[:, n_keys].sum(axis=0)[None, None]
        d_k, d_v = d_k[:, :n_keys], d_v[:, :n_keys]                   # the real key tokens
        w_q, w_k, w_v = self.projections()
        d_weights = [np.einsum("nto,nti->oi", d, x) for d, x in zip((d_q, d_k, d_v), inputs)]
        if self.packed:
            grads["in_proj_weight"] = np.concatenate(d_weights)
        else:
            for name, d_weight in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"),
                                      d_weights):
                grads[name] = d_weight
        if "in_proj_bias" in self._parameters:
            grads["in_proj_bias"] = np.concatenate([d.sum(axis=(0, 1)) for d in (d_q, d_k, d_v)])
        for name, d, weight in zip(("query", "key", "value"), (d_q, d_k, d_v), (w_q, w_k, w_v)):
            grads[name] = (d @ weight) if batched else (d @ weight)[0]
        return grads

    def _forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                 average_attn_weights, is_causal, engine, options):
        """The forward pass, and what the backward pass needs from it."""
        check_choice("engine", engine, MHA_ENGINES)
        for name, instead in OWN_OPTIONS.items():
            if name in options:
                raise InvalidArgumentError(f"{name} is not an option of MultiHeadAttention: "
                                           f"{instead}")
        query, key, value, batched = self._inputs(query, key, value)
        n_batch, n_queries, _ = query.shape
        # q: (N, H, L, d); k, v: (N, Hkv, S', d)
        q, k, v = self._project(query, key, value)
        mask = mha_route_mask(attn_mask, key_padding_mask, is_causal, self.num_heads, n_batch,
                              n_queries, key.shape[1], k.shape[2], batched)
        arguments = dict(attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads,
                         **options)
        run = None
        if engine == "messages":
            entries = q.shape[0] * q.shape[1] * n_queries * k.shape[2]   # N·H·L·S'
            if need_weights and entries > WEIGHTS_LIMIT:
                raise InvalidArgumentError(
                    f"need_weights=True returns dense weights (N, H, L, S) of {entries:,} "
                    f"entries, over rs.run.WEIGHTS_LIMIT = {WEIGHTS_LIMIT:,}: pass "
                    "need_weights=False (the module's last_run.route_weights() then has "
                    "the shares per route)")
            with checked_upstream():
                if batched:
                    run = simulate(q, k, v, **arguments)
                    heads = run.output
                    weights = run.weights if need_weights else None
                else:  # unbatched: a Run of (H, L, ...) heads, addressed by head= alone
                    mask = arguments["attn_mask"]
                    run = simulate(q[0], k[0], v[0], **{**arguments, "attn_mask": None if mask
                                                        is None else mask[0]})
                    heads = run.output[None]
                    weights = run.weights[None] if need_weights else None
            self.last_run = run
        else:
            with checked_upstream():
                heads, weights = attention(q, k, v, return_weights=True, **arguments) \
                    if need_weights else (attention(q, k, v, **arguments), None)
        merged = heads.transpose(0, 2, 1, 3).reshape(n_batch, n_queries, self.embed_dim)
        output = merged @ self._parameters["out_proj.weight"].T        # (N, L, E)
        if "out_proj.bias" in self._parameters:
            output = output + self._parameters["out_proj.bias"]
        if need_weights and average_attn_weights:
            weights = weights.mean(axis=1)                             # (N, L, S')
        if not batched:
            output, weights = output[0], None if weights is None else weights[0]
        arguments.pop("network", None)
        for name in ("trace", "delivery", "softmax", "numerics", "routing", "top_k"):
            arguments.pop(name, None)
        saved = ((query, key, value), (q, k, v), merged, arguments, run, batched)
        return output, (weights if need_weights else None), saved

    def _inputs(self, query, key, value):
        arrays = [as_numpy(name, x) for name, x in zip(("query", "key", "value"),
                                                       (query, key, value))]
        for name, array in zip(("query", "key", "value"), arrays):
            if array.ndim not in (2, 3):
                raise ShapeError(f"{name} must be (N, L, E) batched or (L, E) unbatched, got shape "
                                 f"{array.shape}")
        if len({array.ndim for array in arrays}) > 1:
            raise ShapeError("query, key and value must all be batched (3-D) or all unbatched "
                             f"(2-D), got shapes {[a.shape for a in arrays]}")
        batched = arrays[0].ndim == 3
        query, key, value = (a if batched else a[None] for a in arrays)
        for name, array, width in (("query", query, self.embed_dim), ("key", key, self.kdim),
                                   ("value", value, self.vdim)):
            if array.shape[-1] != width:
                option = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
                raise ShapeError(f"{name} has {array.shape[-1]} features but the module's {option} "
                                 f"is {width} ({name} shape {array.shape})")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ShapeError(f"batch and sequence dims do not fit: query {query.shape}, key "
                             f"{key.shape}, value {value.shape}")
        return query, key, value, batched

    def _project(self, query, key, value):
        """Project and split into heads; append bias_k/bias_v and the zero-attention token."""
        w_q, w_k, w_v = self.projections()
        E, kv = self.embed_dim, self.kv_dim
        q, k, v = query @ w_q.T, key @ w_k.T, value @ w_v.T            # (N, L, E), (N, S, kv) x2
        if "in_proj_bias" in self._parameters:
            b = self._parameters["in_proj_bias"]
            q, k, v = q + b[:E], k + b[E:E + kv], v + b[E + kv:]
        n_batch = q.shape[0]
        extra_k, extra_v = [], []
        if "bias_k" in self._parameters:
            extra_k.append(np.broadcast_to(self._parameters["bias_k"], (n_batch, 1, kv)))
            extra_v.append(np.broadcast_to(self._parameters["bias_v"], (n_batch, 1, kv)))
        if self.add_zero_attn:
            extra_k.append(np.zeros((n_batch, 1, kv)))
            extra_v.append(np.zeros((n_batch, 1, kv)))
        k = np.concatenate([k, *extra_k], axis=1)                      # (N, S', kv)
        v = np.concatenate([v, *extra_v], axis=1)

        def heads(x: np.ndarray, count: int) -> np.ndarray:
            return x.reshape(n_batch, x.shape[1], count, self.head_dim).transpose(0, 2, 1, 3)

        return heads(q, self.num_heads), heads(k, self.num_kv_heads), heads(v, self.num_kv_heads)


def _positive(name: str, number) -> int:
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {number!r}")
    return int(number)


def initial_weights(rng: np.random.Generator, embed_dim: int, kv_dim: int, kdim: int,
                    vdim: int, packed: bool, bias: bool, add_bias_kv: bool
                    ) -> dict[str, np.ndarray]:
    """PyTorch's scheme: xavier-uniform projections, zero biases, xavier-normal bias_k/v.

    Examples
    --------
    >>> weights = initial_weights(np.random.default_rng(0), 4, 4, 4, 4, True, True, False)
    >>> sorted(weights), weights["in_proj_weight"].shape
    (['in_proj_bias', 'in_proj_weight', 'out_proj.bias', 'out_proj.weight'], (12, 4))
    """
    def xavier(rows: int, cols: int) -> np.ndarray:
        bound = math.sqrt(6.0 / (rows + cols))
        return rng.uniform(-bound, bound, size=(rows, cols))

    E, kv = embed_dim, kv_dim
    parameters: dict[str, np.ndarray] = {}
    if packed:
        parameters["in_proj_weight"] = xavier(3 * E, E)
    else:
        parameters["q_proj_weight"] = xavier(E, E)
        parameters["k_proj_weight"] = xavier(kv, kdim)
        parameters["v_proj_weight"] = xavier(kv, vdim)
    if bias:
        parameters["in_proj_bias"] = np.zeros(E + 2 * kv)
    if add_bias_kv:
        parameters["bias_k"] = rng.normal(0, math.sqrt(2.0 / (2 * kv)), size=(1, 1, kv))
        parameters["bias_v"] = rng.normal(0, math.sqrt(2.0 / (2 * kv)), size=(1, 1, kv))
    bound = 1 / math.sqrt(E)
    parameters["out_proj.weight"] = rng.uniform(-bound, bound, size=(E, E))
    if bias:
        parameters["out_proj.bias"] = np.zeros(E)
    return parameters


def checked_weights(mapping: Mapping[str, object], current: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """``mapping`` as float64 copies, if it has exactly ``current``'s keys and shapes and
    finite values; else a project error naming the keys or the entry."""
    given, expected = set(mapping), set(current)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise InvalidArgumentError(
            "state dict does not fit this module: "
            + "; ".join(part for part in (f"missing keys {missing}" if missing else "",
                                          f"unexpected keys {extra}" if extra else "")
                        if part))
    loaded = {}
    for name, present in current.items():
        array = np.asarray(mapping[name], dtype=np.float64).copy()
        if array.shape != present.shape:
            raise ShapeError(f"state dict entry {name!r} has shape {array.shape}, this module "
                             f"needs {present.shape}")
        if not np.isfinite(array).all():
            raise InvalidArgumentError(f"state dict entry {name!r} holds non-finite values")
        loaded[name] = array
    return loaded
