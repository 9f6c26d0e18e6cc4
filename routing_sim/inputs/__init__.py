"""The user's inputs as routing_sim reads them: arrays, masks, positions, score mods.

Everything here works on what a caller hands to :func:`~routing_sim.attention` or
:func:`~routing_sim.simulate`, before any route exists: arrays turned into numpy
(:mod:`.arrays`), ``attn_mask`` and ``is_causal`` turned into allowed routes
(:mod:`.masks`), positions (ALiBi, RoPE: :mod:`.positions`) and FlexAttention's score mods
(:mod:`.mods`). :mod:`routing_sim.routes` builds the routes from them.
"""

from __future__ import annotations

from .positions import RotaryEmbedding

__all__ = ["RotaryEmbedding"]
