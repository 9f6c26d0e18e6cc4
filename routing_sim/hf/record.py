"""Recording what a transformers model's attention calls did, one ``Run`` per call.

Inside ``with record() as rec:``, every call of a registered routing_sim backend appends
an :class:`AttentionRecord`: the layer (the module's ``layer_idx``), the step (a new step
starts when a module already recorded in this step is called again: one per forward, one
per generated token), which attention it was (``"self"``, ``"cross"``) and the
:class:`~routing_sim.Run` with its routing tables, trace, stats and replay page.
Recording is bounded: after ``limit`` records the rest are counted, not kept. Given the
model and its tokenizer, the runs' routing tables name the tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError
from ..options import TRACE_DETAILS, TraceDetail
from ..reference.verify import Verdict, verdict
from ..results.run import Run

if TYPE_CHECKING:
    import torch

__all__ = ["AttentionRecord", "Recorder", "active", "record", "token_texts"]

_ACTIVE: ContextVar[Recorder | None] = ContextVar("routing_sim_hf_recorder", default=None)


@dataclass(frozen=True)
class AttentionRecord:
    """One attention call: where in the model, when, and the simulation that did it."""

    layer: int | None        # the attention module's layer_idx
    step: int                # forward / generation step, from 0
    attention: str           # "self" or "cross"
    module: str              # the attention module's class name
    run: Run
    inputs: dict = field(repr=False)   # query, key, value, attn_mask, ...: attention() keywords

    def verdict(self) -> Verdict:
        """This call's run against :func:`~routing_sim.attention` on the same inputs."""
        return verdict(self.run.output, self.run.weights, **self.inputs)

    def __repr__(self) -> str:
        return (f"AttentionRecord(layer={self.layer}, step={self.step}, "
                f"attention={self.attention!r}, module={self.module!r}, "
                f"output={tuple(self.run.output.shape)}, "
                f"messages={self.run.stats.total_messages})")


@dataclass
class Recorder:
    """What ``record()`` yields: ``runs`` (the records, in call order) and ``skipped``."""

    limit: int
    trace: str
    runs: list[AttentionRecord] = field(default_factory=list)
    skipped: int = 0
    _step: int = 0
    _seen: set = field(default_factory=set, repr=False)
    _tokens: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def add(self, module: torch.nn.Module, run: Run, inputs: dict) -> None:
        """Record one attention call of ``module`` (called by the backend)."""
        if id(module) in self._seen:
            self._step += 1
            self._seen.clear()
        self._seen.add(id(module))
        attention = "cross" if _is_cross(module) else "self"
        if len(self.runs) >= self.limit:
            self.skipped += 1
            return
        self.runs.append(AttentionRecord(getattr(module, "layer_idx", None), self._step,
                                         attention, type(module).__name__, run, inputs))

    def layer(self, layer: int, step: int | None = None) -> list[AttentionRecord]:
        """The records of ``layer`` (at ``step``, if given)."""
        return [r for r in self.runs if r.layer == layer and step in (None, r.step)]

    def __str__(self) -> str:
        steps = len({r.step for r in self.runs})
        text = f"{len(self.runs)} attention calls recorded over {steps} steps"
        if self.skipped:
            text += f"; limit {self.limit} reached, {self.skipped} more calls not recorded"
        return text

    def labels(self, module: torch.nn.Module, n_queries: int, n_keys: int) -> dict[str, list[str]]:
        """``labels=`` and ``key_labels=`` for simulate: batch row 0's tokens, if known."""
        attention = "cross" if _is_cross(module) else "self"
        decoder = getattr(module, "is_decoder", False) and "decoder" in self._tokens
        query_side = self._tokens.get("decoder" if decoder else "input")
        key_side = self._tokens.get("input") if attention == "cross" else query_side
        if query_side is None or key_side is None or n_keys > len(key_side) \
                or n_queries > len(query_side):
            return {}
        return {"labels": query_side[len(query_side) - n_queries:],   # the newest tokens
                "key_labels": key_side[len(key_side) - n_keys:]}

    def _hook(self, side: str, tokenizer):
        """A forward pre-hook keeping batch row 0's token texts for ``side``."""
        argument = "decoder_input_ids" if side == "decoder" else "input_ids"

        def remember(module, args, kwargs):
            ids = kwargs.get(argument, args[0] if args and side == "input" else None)
            if ids is None:
                return
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            seen = cache.get_seq_length() if cache is not None else 0     # tokens cached
            texts = token_texts(tokenizer, ids[0].tolist())
            self._tokens[side] = self._tokens.get(side, [])[:seen] + list(texts)

        return remember


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each id's text from ``tokenizer.convert_ids_to_tokens``; ``id<number>`` for an id it
    does not know (a model's vocabulary is often larger than its tokenizer's; ``#`` would read
    as a position, as it does in routing tables).

    Examples
    --------
    >>> class Words:
    ...     def convert_ids_to_tokens(self, ids):
    ...         return [{3: "cat"}.get(i) for i in ids]
    >>> token_texts(Words(), [3, 90])
    ['cat', 'id90']
    """
    return [f"id{i}" if text is None else str(text)
            for i, text in zip(ids, tokenizer.convert_ids_to_tokens(ids))]


def active() -> Recorder | None:
    """The innermost recorder in effect, or None."""
    return _ACTIVE.get()


@contextmanager
def record(limit: int = 64, trace: TraceDetail = "auto", *,
           model: Any = None, tokenizer: Any = None) -> Iterator[Recorder]:
    """Keep one :class:`AttentionRecord` per attention call of a routing_sim backend.

    Parameters
    ----------
    limit : int
        Records kept; later calls are counted in ``skipped`` (each record holds a Run, and
        a Run holds its routes and, with a full trace, every message).
    trace : {"auto", "full", "summary"}
        The runs' trace detail while recording: ``"auto"`` keeps every message up to
        200,000 per call and totals beyond.
    model, tokenizer : optional
        Both together: routing tables show batch row 0's tokens as text.

    Examples
    --------
    >>> import torch, routing_sim as rs
    >>> from routing_sim.hf.tiny import tiny_model
    >>> model = tiny_model("gpt2", layers=2, attn_implementation=rs.hf.register())
    >>> with rs.hf.record() as rec, torch.no_grad():
    ...     _ = model.generate(torch.tensor([[4, 8, 15]]), max_new_tokens=2, do_sample=False,
    ...                        pad_token_id=0)
    >>> [(r.layer, r.step, r.run.output.shape[-2]) for r in rec.runs]
    [(0, 0, 3), (1, 0, 3), (0, 1, 1), (1, 1, 1)]
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgumentError(f"limit must be an integer >= 0, got {limit!r}")
    if trace not in TRACE_DETAILS:
        raise InvalidArgumentError(f"trace must be one of {TRACE_DETAILS}, got {trace!r}")
    if (model is None) != (tokenizer is None):
        raise InvalidArgumentError("token labels need both model= and tokenizer=")
    recorder = Recorder(limit, trace)
    handles = []
    if model is not None:
        if getattr(model.config, "is_encoder_decoder", False):
            handles.append(model.get_encoder().register_forward_pre_hook(
                recorder._hook("input", tokenizer), with_kwargs=True))
            handles.append(model.register_forward_pre_hook(
                recorder._hook("decoder", tokenizer), with_kwargs=True))
        else:
            handles.append(model.register_forward_pre_hook(
                recorder._hook("input", tokenizer), with_kwargs=True))
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
        for handle in handles:
            handle.remove()


def _is_cross(module) -> bool:
    """A decoder's attention over the encoder (BART, T5): decoder-side and not causal."""
    return bool(getattr(module, "is_decoder", False) and not getattr(module, "is_causal", True))
