"""The browser for the console's browser tests: Debian's Chromium driven by Playwright (never
`playwright install`: the browser comes from apt, `.ci/run` installs it).

Under CI=true a missing Chromium (or Playwright) fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _unavailable

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop running on this
    # thread while it is open, and later tests that call asyncio.run() must not see it.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable("Playwright (pip install -e '.[dev]')", exc)
    path = shutil.which("chromium")
    if path is None:
        _unavailable(
            "Chromium (apt-get install chromium)", FileNotFoundError("chromium is not on PATH")
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: a temporary directory, or the committed ones with
    RECON_E2E_SCREENSHOTS=tests/e2e/screenshots (the README shows them)."""
    path = Path(os.environ.get("RECON_E2E_SCREENSHOTS") or tmp_path / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def watch_console(page: Any) -> list[str]:
    """Errors the page logs (a blocked inline script or style shows up here) and any dialog
    a script opened (an injected ``alert`` would)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def dialog(d: Any) -> None:
        errors.append(f"dialog: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)
    return errors


def post_form(page: Any, action: str, fields: dict[str, str]) -> Any:
    """What a crafted request looks like from a signed-in browser: a form the page never
    offered, submitted as a top-level navigation."""
    with page.expect_navigation() as nav:
        page.evaluate(
            """([action, fields]) => {
                const f = document.createElement("form");
                f.method = "post";
                f.action = action;
                for (const [k, v] of Object.entries(fields)) {
                    const i = document.createElement("input");
                    i.type = "hidden"; i.name = k; i.value = v;
                    f.appendChild(i);
                }
                document.body.appendChild(f);
                f.submit();
            }""",
            [action, fields],
        )
    return nav.value
