"""``python -m routing_sim.cli``: the ``routing-sim`` command."""

from __future__ import annotations

from .command import main

raise SystemExit(main())
