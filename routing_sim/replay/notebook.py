"""Rich display in Jupyter: ``Run._repr_html_`` and ``RoutingTable._repr_html_``.

A run shows a one-line summary, its routing tables as share grids, and the replay page
inline (in a sandboxed ``iframe``, so its script and style stay its own).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from ..times import format_time
from . import page_data, page_html, title_of
from .data import group_name

if TYPE_CHECKING:
    from ..run import RoutingTable, Run

__all__ = ["INLINE_LIMIT", "GRID_LIMIT", "run_html", "table_html"]

INLINE_LIMIT = 2_000_000     # characters of replay page shown inline; beyond, a pointer
GRID_LIMIT = 32              # tokens per side of a share grid; beyond, a pointer
_BAR = ("display:inline-block;height:9px;background:#0b6bcb;vertical-align:middle;"
        "margin-right:6px")


def table_html(table: RoutingTable) -> str:
    """A routing table as an HTML table with a bar per share."""
    who = f"token {table.label} (#{table.token})" if table.label else f"token #{table.token}"
    rows = []
    for route in table.routes:
        pulled = (f"{route.bytes_pulled} B at t={format_time(route.arrived)}" if route.bytes_pulled
                  else "not pulled")
        rows.append(
            f"<tr><td>{html.escape(route.name)}</td><td style='text-align:left'>"
            f"<span style='{_BAR};width:{100 * route.share:.1f}px'></span>"
            f"{route.share:.4f} ({100 * route.share:.1f}%)</td><td>{route.score:+.3f}</td>"
            f"<td>{pulled}</td></tr>")
    if not table.routes:
        rows.append("<tr><td colspan='4'>no routes: this token cannot reach any key</td></tr>")
    if table.sink is not None:
        rows.append(f"<tr><td><i>sink</i></td><td style='text-align:left'><span style='{_BAR};"
                    f"width:{100 * table.sink:.1f}px'></span>{table.sink:.4f} "
                    f"({100 * table.sink:.1f}%)</td><td>{table.sink_logit:+.3f}</td>"
                    "<td>pulls no value</td></tr>")
    return (f"<table><caption style='text-align:left'><b>routing table of "
            f"{html.escape(who)}{html.escape(table.where)}</b></caption>"
            "<thead><tr><th>key token</th><th>share</th><th>score</th><th>value pulled</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p style='font-size:smaller'>{len(table.routes)} routes, {table.messages} "
            f"messages, output complete at t={format_time(table.completed)}</p>")


def run_html(run: Run) -> str:
    """A run: summary line, share grids per head, and the replay page inline."""
    stats = run.stats
    summary = (f"<p><b>Run</b>: output {run.output.shape}, weights {run.weights.shape}, "
               f"{stats.routes:,} routes, {stats.total_messages:,} messages "
               f"({stats.total_bytes:,} bytes), last output at t={format_time(stats.makespan)}, "
               f"{html.escape(run.trace.detail)} trace</p>")
    return summary + _grids(run) + _inline_page(run)


def _grids(run) -> str:
    """Every head's routing tables as one grid: row i is query i, cell j its share for j."""
    weights = np.asarray(run.weights)
    n_queries, n_keys = weights.shape[-2:]
    if max(n_queries, n_keys) > GRID_LIMIT:
        return (f"<p>Routing tables: {n_queries} x {n_keys} tokens are too many to draw here; "
                "see <code>run.routing_table(i)</code> or the replay page.</p>")
    query_labels, key_labels = run.labels
    name = lambda labels, i: html.escape(str(labels[i]) if labels[i] is not None  # noqa: E731
                                         else f"#{i}")
    flat = weights.reshape(-1, n_queries, n_keys)                      # (G, L, S)
    grids = []
    for group, shares in enumerate(flat[:8]):
        header = "".join(f"<th>{name(key_labels, j)}</th>" for j in range(n_keys))
        body = "".join(
            f"<tr><th>{name(query_labels, i)}</th>" + "".join(
                f"<td title='{share!r}' style='background:rgba(11,107,203,{share:.3f});"
                f"color:{'#fff' if share > 0.55 else '#000'}'>{share:.2f}</td>"
                if np.isfinite(share) else "<td>nan</td>"
                for share in shares[i].tolist()) + "</tr>"
            for i in range(n_queries))
        grids.append(f"<table style='display:inline-table;margin:4px 12px 4px 0'><caption>"
                     f"{html.escape(group_name(weights.shape[:-2], group))}</caption><thead><tr>"
                     f"<th>query \\ key</th>{header}</tr></thead><tbody>{body}</tbody></table>")
    more = f"<p>... and {len(flat) - 8} more heads</p>" if len(flat) > 8 else ""
    return "<div>" + "".join(grids) + more + "</div>"


def _inline_page(run) -> str:
    if not run.trace.full:
        return ("<p>No replay inline: this run kept a summary trace (simulate with "
                "<code>trace='full'</code>); <code>run.to_html(path)</code> still writes the "
                "tables.</p>")
    page = page_html(page_data(run), title_of(run, "forward"))
    if len(page) > INLINE_LIMIT:
        return (f"<p>The replay page is {len(page):,} characters, too big to show inline; "
                "<code>run.to_html(path)</code> writes it to a file.</p>")
    return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" sandbox=\"allow-scripts "
            "allow-downloads\" style=\"width:100%;height:760px;border:1px solid #d8dde3\" "
            "title=\"routing_sim replay\"></iframe>")
