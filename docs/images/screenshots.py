"""Regenerate the replay screenshots of docs/en/watching.md (needs chromium + playwright).

    .venv/bin/python docs/images/screenshots.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

import routing_sim as rs

HERE = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORDS = "the quick brown fox jumps over the lazy dog and then it sat on a mat".split()


def pages(folder: Path) -> tuple[Path, Path]:
    q, k, v = np.random.default_rng(0).normal(size=(3, 2, 16, 8))
    heads = rs.simulate(q, k, v, is_causal=True, graph=rs.graphs.causal(16, labels=WORDS),
                        network=rs.Network(latency=1.0, jitter=0.4, seed=1), trace="full")
    words = "we route every token".split()
    q, k, v = np.random.default_rng(1).normal(size=(3, 4, 4))
    lossy = rs.simulate(q, k, v, graph=rs.graphs.complete(4, labels=words),
                        network=rs.Network(latency=1.0, jitter=0.3, loss=0.2, duplicate=0.2,
                                           retries=30, seed=3), trace="full")
    return heads.to_html(folder / "heads.html"), lossy.to_html(folder / "lossy.html")


def scrub(page, t: float) -> None:
    page.eval_on_selector('[data-role="time"]', """(scrubber, t) => {
        scrubber.value = t; scrubber.dispatchEvent(new Event('input'));}""", str(t))


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    heads, lossy = pages(folder)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            folder / "profile", executable_path="/usr/bin/chromium", headless=True,
            args=FLAGS, viewport={"width": 1400, "height": 860}, device_scale_factor=1)
        page = browser.new_page()
        page.goto(heads.as_uri())
        page.click('[data-token="12"] circle')
        scrub(page, 3.0)
        page.screenshot(path=HERE / "replay-heads.png", clip={"x": 0, "y": 0, "width": 1400,
                                                              "height": 860})
        page.goto(lossy.as_uri())
        page.click('[data-token="1"] circle')
        page.eval_on_selector('[data-role="temperature"]', """(slider) => {
            slider.value = '0'; slider.dispatchEvent(new Event('input'));}""")
        scrub(page, 1.35)
        page.hover('[data-role="routing-table"] tr:first-child')
        page.screenshot(path=HERE / "replay-lossy.png", clip={"x": 0, "y": 0, "width": 1400,
                                                              "height": 760})
        browser.close()


if __name__ == "__main__":
    main()
