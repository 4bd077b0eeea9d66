"""Fixtures shared by the review console's browser tests (Playwright over Debian's Chromium).

One browser per test module (module scope); each test gets its own context, so
cookies never leak between tests. The browser is the system's ``/usr/bin/chromium``
(``apt-get install chromium``), launched by Playwright without ``playwright install``.
Missing either skips locally and fails in CI (see the root ``conftest.py``).
Screenshots go to ``out/console-screenshots/`` (gitignored) so people can look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ROOT = Path(__file__).resolve().parents[1]
#: Where screenshots are kept for people to look at.
SCREENSHOTS = ROOT / "out" / "console-screenshots"


def chromium_path() -> str | None:
    """Debian's Chromium, or ``$SARSTEER_CHROMIUM``."""
    for candidate in (os.environ.get("SARSTEER_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the whole module."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"],
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (cookies, downloads) per test."""
    ctx = browser.new_context(viewport={"width": 1320, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)`` saves a full-page PNG under out/console-screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
