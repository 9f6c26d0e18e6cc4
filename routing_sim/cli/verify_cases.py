"""The random cases of ``routing-sim verify``: dense masks, and sparse patterns with mods.

Each case is a pure function of its seed (and of the sweep's ``pattern`` restriction), so
``routing-sim verify --only SEED`` rebuilds it exactly. About half the cases of a default
sweep are dense (random shapes, bool/float/causal masks); the others run self-attention
(mostly a few tokens; a quarter of them 13 .. 96 tokens, so a run spans several tiles)
over a pattern of :mod:`routing_sim.patterns` as ``graph=``, sometimes restricted further
by a ``mask_mod`` and with a built-in ``score_mod`` of :mod:`routing_sim.mods`. Every case
runs under a faulty network and a second schedule, and is compared with the matrix
reference :func:`~routing_sim.attention` under :func:`~routing_sim.verify.tolerance`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..inputs import mods
from ..network.conditions import Network
from ..options import PATTERN_NAMES, VERIFY_PATTERNS, check_choice
from ..reference.matrix import attention
from ..reference.verify import tolerance
from ..routes import patterns
from ..routes.route_set import RouteSet
from ..simulation import simulate

__all__ = ["CaseResult", "check_case", "random_case"]


def _near(b, h, q_idx, kv_idx):
    return np.abs(q_idx - kv_idx) <= 2


def _per_head(b, h, q_idx, kv_idx):
    return (kv_idx + h) % 3 != 0


def _per_batch(b, h, q_idx, kv_idx):
    return (q_idx + kv_idx + b) % 2 == 0


MASK_MODS: dict[str, Callable] = {"near": _near, "per_head": _per_head,
                                  "per_batch": _per_batch}


@dataclass(frozen=True)
class CaseResult:
    """One case of an equivalence sweep (see :func:`check_case`)."""

    seed: int
    description: str
    error_ratio: float        # max |sim - ref| / tolerance, outputs and weights (<= 1 passes)
    bit_identical: bool       # two delivery schedules gave the same bits
    passed: bool
    error: str = ""           # what a simulation that raised said (then it did not pass)


def random_case(seed: int, pattern: str | None = None) -> tuple[tuple, dict, str]:
    """A random configuration: ``(q, k, v), keyword arguments, description``.

    ``pattern`` restricts the draw: ``None`` mixes dense and pattern cases, ``"any"`` draws
    only pattern cases, ``"full"`` only dense ones, a pattern name only that pattern. A
    dense case and the draw of a pattern case come from separate seeded streams, so a seed
    gives the same case under ``None`` and under the restriction its case satisfies.

    Examples
    --------
    >>> (q, k, v), options, text = random_case(3, "sliding_window")
    >>> text.startswith("sliding_window("), type(options["graph"]).__name__
    (True, 'RouteSet')
    >>> same = random_case(3, "sliding_window")[0]                # the same seed: the same case
    >>> all(np.array_equal(a, b) for a, b in zip((q, k, v), same))
    True
    """
    if pattern is not None:
        check_choice("pattern", pattern, VERIFY_PATTERNS)
    chooser = np.random.default_rng([seed, 1])
    sparse, drawn = chooser.random() < 0.5, str(chooser.choice(PATTERN_NAMES))
    if pattern == "full" or (pattern is None and not sparse):
        return _dense_case(seed)
    return _pattern_case(chooser, seed, drawn if pattern in (None, "any") else pattern)


def check_case(seed: int, pattern: str | None = None) -> CaseResult:
    """Simulate one random case twice (two schedules) and compare with matrix attention.

    The error ratio is the largest ``|simulated - reference| / tolerance`` over the
    outputs and the routing tables; the case passes when it is at most 1 and both
    schedules gave the same bits. A simulation that raises fails the case (the matrix
    reference accepts every drawn case, so any error is the simulator's).
    """
    (query, key, value), options, description = random_case(seed, pattern)
    network = options.pop("network")
    try:
        run = simulate(query, key, value, network=network, **options)
        other = simulate(query, key, value, network=Network(latency=0.5, jitter=3.0,
                                                            seed=seed + 1), **options)
    except Exception as error:     # noqa: BLE001 - a sweep reports a crash as a failed case
        return CaseResult(seed, description, np.inf, False, False,
                          f"{type(error).__name__}: {error}")
    output_tol, weight_tol = tolerance(query, key, value, **options)
    expected, expected_weights = attention(query, key, value, return_weights=True, **options)
    ratio = max(float(np.max(np.abs(run.output - expected) / output_tol, initial=0.0)),
                float(np.max(np.abs(run.weights - expected_weights) / weight_tol,
                             initial=0.0)))
    same = bool(np.array_equal(run.output, other.output))
    return CaseResult(seed, description, ratio, same, ratio <= 1.0 and same)


def _on_a_network(rng: np.random.Generator, seed: int, arrays: tuple, options: dict,
                  description: str) -> tuple[tuple, dict, str]:
    """The case with a drawn faulty network added to its options and its description."""
    network = Network(latency=float(rng.choice([0.0, 1.0])),
                      jitter=float(rng.choice([0, 2.0])), loss=float(rng.choice([0.0, 0.2])),
                      duplicate=float(rng.choice([0, 0.2])), retries=50, seed=seed)
    options["network"] = network
    return arrays, options, f"{description} loss={network.loss} jitter={network.jitter}"


def _dense_case(seed: int) -> tuple[tuple, dict, str]:
    """Cross-attention shapes with a bool, float or causal mask (or none)."""
    rng = np.random.default_rng(seed)
    heads = int(rng.integers(1, 4))
    n_queries, n_keys = (int(x) for x in rng.integers(1, 9, size=2))
    dim, value_dim = (int(x) for x in rng.integers(1, 9, size=2))
    magnitude = float(rng.choice([0.5, 3.0, 30.0]))
    query = rng.normal(size=(heads, n_queries, dim)) * magnitude
    key = rng.normal(size=(heads, n_keys, dim)) * magnitude
    value = rng.normal(size=(heads, n_keys, value_dim))
    mask_kind = str(rng.choice(["none", "bool", "float", "causal", "bottom_right"]))
    options: dict = {}
    if mask_kind == "bool":
        options["attn_mask"] = rng.random((n_queries, n_keys)) < 0.7
    elif mask_kind == "float":
        bias = rng.normal(size=(n_queries, n_keys))
        bias[rng.random(bias.shape) < 0.2] = -np.inf
        options["attn_mask"] = bias
    elif mask_kind != "none":
        options["is_causal"] = True
        options["causal_alignment"] = "top_left" if mask_kind == "causal" else "bottom_right"
    return _on_a_network(rng, seed, (query, key, value), options,
                         f"heads={heads} L={n_queries} S={n_keys} E={dim} Ev={value_dim} "
                         f"x{magnitude:g} mask={mask_kind}")


def _pattern_case(rng: np.random.Generator, seed: int, name: str
                  ) -> tuple[tuple, dict, str]:
    """Self-attention over a pattern, maybe with a mask_mod and a built-in score_mod."""
    batch, heads = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    # Mostly a few tokens; now and then enough for several tiles of 8 .. 64 query nodes.
    n = int(rng.integers(1, 13)) if rng.random() < 0.75 else int(rng.integers(13, 97))
    dim, value_dim = (int(x) for x in rng.integers(1, 9, size=2))
    magnitude = float(rng.choice([0.5, 3.0, 30.0]))
    query = rng.normal(size=(batch, heads, n, dim)) * magnitude       # (B, H, n, E)
    key = rng.normal(size=(batch, heads, n, dim)) * magnitude
    value = rng.normal(size=(batch, heads, n, value_dim))
    routes, call = _pattern(rng, name, n, seed)
    options: dict = {"graph": routes}
    mask_name = str(rng.choice(["none", *MASK_MODS]))
    if mask_name != "none":
        options["mask_mod"] = MASK_MODS[mask_name]
    score_mod = _score_mod(rng, str(rng.choice(["none", "softcap", "alibi", "relative_bias"])),
                           heads)
    if score_mod is not None:
        options["score_mod"] = score_mod
    return _on_a_network(rng, seed, (query, key, value), options,
                         f"{call} B={batch} heads={heads} E={dim} Ev={value_dim} "
                         f"x{magnitude:g} mask_mod={mask_name} score_mod={score_mod!r}")


def _pattern(rng: np.random.Generator, name: str, n: int, seed: int) -> tuple[RouteSet, str]:
    """One pattern over ``n`` tokens with drawn options, and the call that builds it."""
    def draw(low: int, high: int) -> int:
        return int(rng.integers(low, high + 1))

    reach = max(4, n // 8)                            # windows and blocks grow with n

    if name == "sliding_window":
        options = {"window": draw(1, reach), "sinks": draw(0, 2)}
        return patterns.sliding_window(n, **options), _call(name, n, options)
    if name == "longformer":
        options = {"window": draw(0, reach), "global_tokens": draw(0, min(2, n))}
        return patterns.longformer(n, **options), _call(name, n, options)
    if name == "bigbird":
        options = {"block": draw(1, reach - 1), "window_blocks": int(rng.choice([1, 3])),
                   "global_blocks": draw(0, 2), "random_blocks": draw(0, 2), "seed": seed}
        return patterns.bigbird(n, **options), _call(name, n, options)
    if name == "dilated":
        options = {"window": draw(1, reach - 1), "dilation": draw(1, 3)}
        return patterns.dilated(n, **options), _call(name, n, options)
    if name == "document":
        cuts = np.sort(rng.integers(0, n + 1, size=draw(0, 2 + n // 32)))
        lengths = np.diff([0, *cuts, n]).tolist()
        causal = bool(rng.random() < 0.5)
        return patterns.document(lengths, causal=causal), \
            f"document({lengths}, causal={causal})"
    options = {"prefix": draw(0, n)}
    return patterns.prefix_lm(n, **options), _call(name, n, options)


def _call(name: str, n: int, options: dict) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in options.items())}, n={n})"


def _score_mod(rng: np.random.Generator, kind: str, heads: int) -> mods.ScoreMod | None:
    """A built-in score mod: softcap (caps inside and beyond the ±100 contract), ALiBi
    slopes per head, or a relative-position table, shared or per head."""
    if kind == "softcap":
        return mods.softcap(float(rng.choice([1.0, 5.0, 20.0, 200.0])))
    if kind == "alibi":
        return mods.alibi(np.round(rng.uniform(0.1, 2.0, size=heads), 3))
    if kind == "relative_bias":
        reach = int(rng.integers(1, 4))
        shape = (2 * reach - 1,) if rng.random() < 0.5 else (heads, 2 * reach - 1)
        return mods.relative_bias(np.round(rng.normal(size=shape) * 3.0, 3))
    return None
