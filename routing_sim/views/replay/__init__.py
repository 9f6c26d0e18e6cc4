"""The offline replay page: one self-contained HTML file that replays a run's messages.

The page is hand-written (``page.html``, ``replay.css`` and the script in two parts,
``stage.js`` and ``panels.js``, beside this file) and gets the run as JSON; :func:`page_html`
inlines them all, the two parts in that order into one function body, so the file makes
no network request. Its DOM contract (what tests and scripts may rely on) is documented in
``docs/en/watching.md``.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError
from .cluster import cluster_data, cluster_title
from .data import ANIMATED_LIMIT, page_data

if TYPE_CHECKING:
    from ...parallel.run import ParallelRun
    from ...results.run import Run
    from ...trace.log import Trace
    from ...trace.stats import Stats

__all__ = ["ANIMATED_LIMIT", "page_data", "page_html", "write_cluster_html", "write_html"]


def page_html(data: dict, title: str) -> str:
    """The page for ``data`` (from :func:`page_data`) as one HTML string."""
    folder = resources.files(__package__)
    template, style, stage, panels = (folder.joinpath(name).read_text(encoding="utf-8")
                                      for name in ("page.html", "replay.css", "stage.js",
                                                   "panels.js"))
    script = stage + "\n" + panels                   # one scope: panels uses stage's names
    # "<" never appears inside the JSON text, so no "</script>" can close the data early.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    parts = {"<!--title-->": html.escape(title), "/*style*/": style, "/*script*/": script,
             "<!--data-->": payload}
    for marker, text in parts.items():
        if marker not in template:
            raise AssertionError(f"page.html lost its {marker} marker")
        template = template.replace(marker, text)
    return template


# How to get a page of a run too big for one: the page holds every dense routing table.
SMALLER = ("for a page, simulate a part of the run: one head (q[h], k[h], v[h]), a smaller "
           "slice (q[..., :n, :] with k and v cut alike), or a range of queries against every "
           "key (q[..., a:b, :] with the whole k and v; a mask or is_causal becomes "
           "attn_mask=mask[a:b])")


def write_html(run: Run, path: str | os.PathLike[str], trace: Trace | None = None,
               stats: Stats | None = None, phase: str = "forward",
               note: str | None = None) -> Path:
    """Write the replay page of ``run`` (messages from ``trace``, default its own) to
    ``path``, with ``note`` among the page's notices; returns the path."""
    run.require_dense(f"the replay page ({phase} pass)", instead=SMALLER)
    return _write(path, lambda: page_html(page_data(run, trace, stats, phase, note),
                                          title_of(run, phase)))


def write_cluster_html(prun: ParallelRun, path: str | os.PathLike[str]) -> Path:
    """Write the replay page of a context-parallel run: devices and their transfers."""
    return _write(path, lambda: page_html(cluster_data(prun), cluster_title(prun)))


def _write(path, page) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"path must be a file path (str or pathlib.Path), got "
                                   f"{type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"path {str(path)!r}: directory {str(path.parent)!r} does "
                                   "not exist")
    path.write_text(page(), encoding="utf-8")
    return path


def title_of(run: Run, phase: str) -> str:
    """A one-line title: which pass, how many groups and tokens."""
    shape = run.weights.shape
    groups = 1
    for size in shape[:-2]:
        groups *= size
    return (f"routing_sim replay: {phase} pass, {groups} head{'s' if groups != 1 else ''}, "
            f"{shape[-2]} query x {shape[-1]} key tokens")
