"""The replay page in a real browser: Playwright driving Debian's headless Chromium.

Browser builds cannot be downloaded here, so the suite drives the system ``chromium``
(``apt-get install chromium``; ``.ci/run`` installs it) through ``executable_path``. It
skips, saying why, only when no Chromium or no Playwright is installed.
"""

from __future__ import annotations

import io
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

import routing_sim as rs
from routing_sim.cli import main
from routing_sim.network.messages import Fate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium: apt-get install chromium (Debian) to run the browser suite",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="no Playwright: pip install 'routing_sim[test]'")
Image = pytest.importorskip("PIL.Image", reason="screenshots are read with Pillow "
                                                "(installed with the plot extra)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORDS = "the quick brown fox jumps over the lazy dog and then it sat on a mat".split()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium with a fresh profile for the whole module."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM,
            headless=True, args=FLAGS, viewport={"width": 1400, "height": 900},
            accept_downloads=True)
        yield context
        context.close()


class Page:
    """An opened replay page that records console errors, page errors and requests."""

    def __init__(self, browser, path: Path):
        self.problems: list[str] = []
        self.page = browser.new_page()
        self.page.on("console", lambda message: message.type in ("error", "warning")
                     and self.problems.append(f"console {message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("request", self._request)
        self.page.goto(path.resolve().as_uri())
        self.url = path.resolve().as_uri()

    def _request(self, request) -> None:
        if request.url != getattr(self, "url", request.url) and \
                not request.url.startswith(("blob:", "data:")):
            self.problems.append(f"request: {request.url}")

    def table(self, role: str = "routing-table") -> dict[int, str]:
        return dict(self.page.eval_on_selector_all(
            f'[data-role="{role}"] tr',
            "rows => rows.map(row => [Number(row.dataset.key), row.dataset.share])"))

    def every_table(self) -> list[dict[int, str]]:
        """Click each query token in turn (a script's click): its routing table each time."""
        return [dict(rows) for rows in self.page.evaluate("""() =>
            Array.from(document.querySelectorAll('[data-token]')).map(token => {
                token.dispatchEvent(new MouseEvent('click', {bubbles: true}));
                return Array.from(document.querySelectorAll('[data-role="routing-table"] tr'))
                    .map(row => [Number(row.dataset.key), row.dataset.share]);
            })""")]

    def select_head(self, head: int) -> None:
        self.page.select_option('select[data-role="head"]', str(head))

    def click_token(self, token: int) -> None:
        self.page.click(f'[data-token="{token}"] circle')

    def scrub(self, times: list[str]) -> list[tuple[float, str]]:
        """Set the scrubber to each time (an input event each); the value the browser
        kept and the in-flight text it showed."""
        return self.page.evaluate("""times => times.map(t => {
            const scrubber = document.querySelector('input[type=range][data-role="time"]');
            scrubber.value = t;
            scrubber.dispatchEvent(new Event('input', {bubbles: true}));
            return [Number(scrubber.value),
                    document.querySelector('[data-role="in-flight"]').textContent];
        })""", times)

    def set_input(self, role: str, value: str) -> None:
        self.page.eval_on_selector(f'[data-role="{role}"]', """(element, value) => {
            element.value = value;
            element.dispatchEvent(new Event('input', {bubbles: true}));
        }""", value)

    def close(self) -> None:
        self.page.close()
        assert self.problems == []


@pytest.fixture
def opened(browser):
    pages = []

    def open_page(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]

    yield open_page
    for page in pages:
        page.close()


def inputs(shape, seed):
    return np.random.default_rng(seed).normal(size=(3, *shape))


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Runs from several scenarios, each with the arguments that made it and its page."""
    folder = tmp_path_factory.mktemp("pages")
    cases = {
        "heads": (inputs((2, 16, 8), 0), dict(is_causal=True, graph=rs.graphs.causal(
            16, labels=WORDS), network=rs.Network(latency=1.0, jitter=0.4, seed=1))),
        "lossy": (inputs((5, 4), 1), dict(network=rs.Network(
            latency=1.0, jitter=0.3, loss=0.2, duplicate=0.2, retries=30, seed=3))),
        "sampled": (inputs((2, 32, 4), 3), dict(network=rs.Network(jitter=0.2, seed=2))),
    }
    q, k, v = inputs((2, 2, 6, 3), 2)
    cases["cross"] = ((q[:, :, :4], k, v), dict(network=rs.Network(latency=1.0)))
    runs = {}
    for name, ((q, k, v), options) in cases.items():
        run = rs.simulate(q, k, v, trace="full", **options)
        runs[name] = (run, (q, k, v), options, run.to_html(folder / f"{name}.html"))
    return runs


def expected_in_flight(trace, group: int, t: float) -> int:
    return int(np.sum((trace.fate == Fate.DELIVERED) & (trace.group == group)
                      & (trace.sent <= t) & (t < trace.arrive)))


def scrub_times(trace, count: int = 40) -> list[str]:
    """Exact event times (where the boundaries matter), midpoints, and both ends."""
    edges = np.unique(np.concatenate((trace.sent, trace.arrive[trace.fate == Fate.DELIVERED])))
    picks = edges[np.linspace(0, len(edges) - 1, count).astype(int)]
    middles = (edges[:-1] + edges[1:])[::max(1, len(edges) // count)] / 2
    return [repr(float(t)) for t in np.concatenate((picks, middles, [0.0, edges[-1] * 2]))]


@pytest.mark.parametrize("name", ["heads", "lossy", "cross", "sampled"])
def test_tables_equal_the_run_weights_for_every_head_and_token(scenarios, opened, name):
    run, *_, path = scenarios[name]
    page = opened(path)
    weights = run.weights.reshape(-1, *run.weights.shape[-2:])       # (G, L, S)
    options = page.page.eval_on_selector_all('select[data-role="head"] option',
                                             "options => options.map(o => o.value)")
    assert options == [str(g) for g in range(len(weights))]
    for group, shares in enumerate(weights):
        page.select_head(group)
        tables = page.every_table()
        assert len(tables) == shares.shape[0]
        for token, table in enumerate(tables):
            reachable = range(token + 1) if name == "heads" else range(shares.shape[1])
            assert table == {j: repr(float(shares[token, j])) for j in reachable}
            assert not shares[token, len(reachable):].any()


@pytest.mark.parametrize("name", ["heads", "lossy", "cross", "sampled"])
def test_in_flight_counts_equal_the_trace_at_many_times(scenarios, opened, name):
    run, *_, path = scenarios[name]
    page = opened(path)
    groups = run.weights.reshape(-1, *run.weights.shape[-2:]).shape[0]
    times = scrub_times(run.trace)
    for group in range(groups):
        page.select_head(group)
        for t, text in page.scrub(times):
            assert int(text.split()[0]) == expected_in_flight(run.trace, group, t), (group, t)
    kept = [t for t, _ in page.scrub(times)]
    # Chromium keeps 15 significant digits of a range value: t is what the input holds.
    assert all(abs(float(a) - b) <= 1e-14 * max(1.0, abs(b)) for a, b in zip(times, kept)
               if float(a) <= float(times[-1]) / 2)


def test_exact_boundaries_with_a_fixed_latency(tmp_path, opened):
    q, k, v = inputs((2, 5, 3), 5)
    run = rs.simulate(q, k, v, network=rs.Network(latency=1.0), trace="full")
    page = opened(run.to_html(tmp_path / "fixed.html"))
    seen = dict(page.scrub(["0", "0.5", "1", "1.5", "2", "3", "3.5", "4", "9"]))
    counts = {t: int(text.split()[0]) for t, text in seen.items()}
    assert counts == {t: expected_in_flight(run.trace, 0, t) for t in seen}
    assert counts[1.0] == counts[0.5] == 25 and counts[4.0] == 0     # arrivals leave at t


def test_hard_end_of_the_temperature_equals_top_1_routing(scenarios, opened):
    run, (q, k, v), options, path = scenarios["heads"]
    hard = rs.simulate(q, k, v, routing="topk", top_k=1, **options).weights
    top_two = rs.simulate(q, k, v, routing="topk", top_k=2, **options).weights
    page = opened(path)
    for group in range(2):
        page.select_head(group)
        for token in (0, 5, 15):
            page.click_token(token)
            page.set_input("temperature", "0")
            page.set_input("top-k", "16")
            assert {j: float(s) for j, s in page.table("what-if").items()} == \
                {j: hard[group, token, j] for j in range(token + 1)}
            page.set_input("temperature", "1")
            what_if = page.table("what-if")
            np.testing.assert_allclose([float(what_if[j]) for j in range(token + 1)],
                                       run.weights[group, token, :token + 1], rtol=1e-12)
            page.set_input("top-k", "2")
            what_if = page.table("what-if")
            np.testing.assert_allclose([float(what_if[j]) for j in range(token + 1)],
                                       top_two[group, token, :token + 1], rtol=1e-12)
    assert page.table() == {j: repr(float(s)) for j, s in enumerate(run.weights[1, 15, :16])}


def test_head_selector_switches_the_table(scenarios, opened):
    run, *_, path = scenarios["heads"]
    page = opened(path)
    page.click_token(9)
    page.select_head(0)
    first = page.table()
    page.select_head(1)
    second = page.table()
    assert first != second
    assert second == {j: repr(float(s)) for j, s in enumerate(run.weights[1, 9, :10])}
    assert "head 1" in page.page.inner_text('[data-role="table-title"]')


def non_blank(png: bytes) -> None:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    colours = np.unique((image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2])
    inked = np.any(image < 200, axis=2).mean()
    assert len(colours) > 50 and 0.01 < inked < 0.6, (len(colours), inked)


@pytest.mark.parametrize("name", ["heads", "cross"])
def test_screenshots_and_exports_are_not_blank(scenarios, opened, name):
    run, *_, path = scenarios[name]
    page = opened(path)
    page.scrub([repr(run.stats.makespan / 3)])
    non_blank(page.page.screenshot(full_page=True))
    with page.page.expect_download() as download:
        page.page.click('[data-role="export-png"]')
    png = Path(download.value.path()).read_bytes()
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (1920, 800 if
                                                                              name == "heads"
                                                                              else 720)
    non_blank(png)
    with page.page.expect_download() as download:
        page.page.click('[data-role="export-svg"]')
    svg = ElementTree.parse(download.value.path()).getroot()
    tokens = [e for e in svg.iter() if e.get("data-token") is not None]
    assert len(tokens) == run.weights.shape[-2]


def test_lost_duplicated_and_retried_messages_are_drawn(scenarios, opened):
    run, *_, path = scenarios["lossy"]
    trace = run.trace
    lost = np.flatnonzero(trace.fate != Fate.DELIVERED)
    page = opened(path)
    page.scrub([repr(float(trace.sent[lost[0]]) + 1e-9)])
    assert page.page.locator("path.lost:visible").count() >= 1
    visible = """selector => Array.from(document.querySelectorAll(selector))
        .filter(element => element.style.display !== 'none').length"""
    marked = np.zeros(3, int)
    for t in np.linspace(0.5, run.stats.makespan, 12):
        [(t, _)] = page.scrub([repr(float(t))])
        moving = (trace.fate == Fate.DELIVERED) & (trace.sent <= t) & (t < trace.arrive)
        expected = [np.sum(moving & (trace.copy == 1)),
                    np.sum(moving & ((trace.copy == 1) | (trace.attempt > 0))), np.sum(moving)]
        assert [page.page.evaluate(visible, selector) for selector in (
            'svg circle[stroke-dasharray="2 2"]', 'svg circle[stroke="#000"]',
            "svg circle[r='5']")] == expected
        marked += expected
    assert marked.all()                        # duplicates and retries were on the wire


def test_backward_and_cli_pages_open_clean(tmp_path, opened):
    q, k, v = inputs((2, 6, 3), 6)
    run = rs.simulate(q, k, v, is_causal=True, network=rs.Network(jitter=0.3, seed=4),
                      trace="full")
    grads = run.backward(np.ones_like(run.output))
    page = opened(grads.to_html(tmp_path / "grads.html"))
    for t, text in page.scrub(scrub_times(grads.trace, 15)):
        assert int(text.split()[0]) == expected_in_flight(grads.trace, 0, t)
    page.click_token(4)
    assert page.table() == {j: repr(float(s)) for j, s in enumerate(run.weights[0, 4, :5])}
    assert "Backward pass" in page.page.inner_text('[data-role="notice"]')
    assert main(["replay", "--heads", "2", "-o", str(tmp_path / "cli.html")]) == 0
    cli = opened(tmp_path / "cli.html")
    cli.click_token(2)
    assert len(cli.table()) == 6


def test_notebook_display_runs_the_page_inline(scenarios, browser):
    run, *_ = scenarios["cross"]
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content(run._repr_html_())
    frame = page.frame_locator("iframe")
    frame.locator('[data-token="3"] circle').click()
    rows = frame.locator('[data-role="routing-table"] tr')
    assert rows.count() == 6 and errors == []
    page.close()


def test_play_pause_and_step_move_the_clock(scenarios, opened):
    run, *_, path = scenarios["heads"]
    page = opened(path).page
    value = "() => Number(document.querySelector('[data-role=\"time\"]').value)"
    page.click('[data-role="play"]')
    # Poll from Python: wait_for_function evaluates its predicate with eval() in the page
    # once the first check fails, which the page's Content-Security-Policy blocks.
    for _ in range(500):
        if page.evaluate(value) > 0:
            break
        page.wait_for_timeout(20)
    assert page.evaluate(value) > 0
    page.click('[data-role="play"]')                                   # pause
    paused = page.evaluate(value)
    page.wait_for_timeout(150)
    assert page.evaluate(value) == paused
    page.click('[data-role="step"]')
    trace = run.trace
    mine = trace.group == 0
    events = np.unique(np.concatenate((trace.sent[mine], trace.arrive[mine])))
    assert page.evaluate(value) == pytest.approx(events[events > paused][0], rel=1e-14)
    page.click('[data-role="step-back"]')
    assert page.evaluate(value) == pytest.approx(events[events < events[events > paused][0]][-1],
                                                 rel=1e-14)


def test_context_parallel_page_counts_transfers_in_flight(tmp_path, opened):
    q, k, v = inputs((2, 32, 8), 8)
    prun = rs.context_parallel(q, k, v, strategy="ring", cluster=rs.Cluster(devices=4),
                               is_causal=True, network=rs.Network(loss=0.2, duplicate=0.2,
                                                                  retries=20, seed=1))
    page = opened(prun.to_html(tmp_path / "cp.html"))
    arrived = [t for t in prun.trace.transfers if t["arrived"] is not None]
    sent = np.array([t["sent"] for t in arrived])
    arrive = np.array([t["arrived"] for t in arrived])
    edges = np.unique(np.concatenate((sent, arrive)))
    times = np.concatenate((edges, (edges[:-1] + edges[1:]) / 2))
    for t, text in page.scrub([repr(float(t)) for t in times]):
        assert int(text.split()[0]) == np.sum((sent <= t) & (t < arrive))
    page.click_token(2)
    received = {}
    for t in prun.trace.transfers:
        if t["fate"] == "delivered" and t["dst"] == 2:
            received[t["src"]] = received.get(t["src"], 0) + t["bytes"]
    assert {j: float(s) for j, s in page.table().items()} == \
        {src: size / sum(received.values()) for src, size in received.items()}
    assert page.page.locator('[data-role="what-if-panel"]').is_hidden()
    non_blank(page.page.screenshot())


@pytest.mark.parametrize("argv", [["--causal"], ["--heads", "2", "--tokens", "我 喜欢 喝 茶"]])
def test_messages_in_flight_at_t0_are_drawn_where_they_can_be_seen(tmp_path, opened, argv,
                                                                   capsys):
    """At t = 0 every QUERY has just left its sender. Each is drawn as a dot outside every
    token's circle (not hidden under its sender), and a stack of dots on one spot says how
    many it holds, so the dots account for the "N messages in flight" of the counter."""
    path = tmp_path / "run.html"
    assert main(["replay", *argv, "-o", str(path)]) == 0
    page = opened(path)
    [(_, counter)] = page.scrub(["0"])
    tokens = page.page.evaluate("""() =>
        Array.from(document.querySelectorAll('[data-token] circle')).map(c =>
            [Number(c.getAttribute('cx')), Number(c.getAttribute('cy')),
             Number(c.getAttribute('r'))])""")
    dots = page.page.evaluate("""() => Array.from(document.querySelectorAll("svg circle[r='5']"))
        .filter(c => c.style.display !== 'none')
        .map(c => [Number(c.getAttribute('cx')), Number(c.getAttribute('cy'))])""")
    stacks = page.page.evaluate("""() => Array.from(document.querySelectorAll('svg text.stack'))
        .filter(t => t.style.display !== 'none').map(t => t.textContent)""")
    n = len(tokens)
    assert counter == f"{n * (n + 1) // 2 if '--causal' in argv else n * n} messages in flight"
    assert len(dots) == int(counter.split()[0])
    for x, y in dots:
        assert min(np.hypot(x - cx, y - cy) - r for cx, cy, r in tokens) > 0
    assert stacks and all(text.startswith("×") for text in stacks)
    assert sum(int(text[1:]) for text in stacks) <= len(dots)
    png = page.page.locator('[data-role="stage"]').screenshot()
    non_blank(png)
    (tmp_path / "t0.png").write_bytes(png)
