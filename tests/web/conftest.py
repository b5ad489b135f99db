"""A real headless Chromium (Debian's package) driven by Playwright, against a live server.

No browser is downloaded: Playwright is pointed at the system executable. Without one the
browser tests skip with the reason, unless TASKALIGN_REQUIRE_BROWSER=1 (CI), where a
missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
AXE = Path(__file__).parent / "assets" / "axe-core-4.10.2" / "axe.min.js"
AXE_SOURCE = AXE.read_text(encoding="utf-8")


def chromium_path() -> str | None:
    explicit = os.environ.get("TASKALIGN_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        reason = "no Chromium found (apt-get install chromium, or set TASKALIGN_CHROMIUM)"
        if os.environ.get("TASKALIGN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # No background traffic: the machine's network is closed, and the tests check
        # that the pages themselves reach nothing outside the server.
        chromium = playwright.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        yield chromium
        chromium.close()


def axe_violations(page: object, tags: tuple[str, ...] = ("wcag2a", "wcag2aa")) -> list[dict]:
    """Run axe-core (vendored) on the page; its WCAG A/AA violations (labels, contrast,
    landmarks, names) as [{id, impact, nodes}]."""
    # Evaluated through the DevTools protocol: the pages' Content-Security-Policy (scripts
    # from the server only) stays on while axe runs.
    page.evaluate(AXE_SOURCE)
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})",
                           list(tags))
    return [{"id": v["id"], "impact": v["impact"],
             "nodes": [n["target"] for n in v["nodes"]][:5]} for v in result["violations"]]
