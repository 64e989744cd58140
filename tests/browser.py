"""Shared by the browser tests: the system's headless Chromium, driven by Playwright (no browser is downloaded).

Where no Chromium is installed the tests are skipped with the reason, unless KDNB_REQUIRE_BROWSER=1 (set by .ci/run),
which turns the skip into a failure.
"""

import os
import shutil
from contextlib import contextmanager

import pytest

# Flags for a machine with no network: without them Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str:
    """The path of Debian's chromium-headless-shell or chromium, or skip (fail under KDNB_REQUIRE_BROWSER=1)."""
    for name in ("chromium-headless-shell", "chromium"):
        path = shutil.which(name)
        if path:
            return path
    reason = "no headless Chromium (apt-get install chromium-headless-shell)"
    if os.environ.get("KDNB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KDNB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A Playwright page in the system's headless Chromium, ``width`` x ``height`` CSS pixels."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
