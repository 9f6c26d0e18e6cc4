"""Layers built on simulated attention: PyTorch's MultiheadAttention, and a decoder.

:mod:`.multihead` is :class:`~routing_sim.MultiHeadAttention` (``nn.MultiheadAttention``'s
weights, key names and semantics, each head's attention run as messages); :mod:`.decoder`
is incremental decoding with a KV cache (:class:`~routing_sim.Decoder`).
"""

from __future__ import annotations

from .decoder import Decoder, DecodeStep
from .multihead import MultiHeadAttention

__all__ = ["DecodeStep", "Decoder", "MultiHeadAttention"]
