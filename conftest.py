"""Doctests of the optional ``routing_sim.hf`` package need torch and transformers."""

import importlib.util

collect_ignore_glob = [] if all(importlib.util.find_spec(name) for name in
                                ("torch", "transformers")) else ["routing_sim/hf/*"]
