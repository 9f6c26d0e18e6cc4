"""Fixtures the fast engine's backward tests share."""

from __future__ import annotations

import pytest

from routing_sim.engines.fast import backward, backward_tiles


@pytest.fixture
def tiled(monkeypatch):
    """The TiledGradients each backward pass made (none: the per-node path ran)."""
    made = []

    class Spy(backward_tiles.TiledGradients):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(backward, "TiledGradients", Spy)
    return made
