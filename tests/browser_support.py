"""What the browser tests share: Debian's Chromium driven by Playwright, one page per test module
on the session's studio (tests/conftest.py: `studio_app`, `chromium`), each page a new owner.

Skipped, with the reason, only when Chromium or Playwright is missing outside CI; in CI (CI=true)
their absence is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
T = 60_000  # ms
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover
    expect = sync_playwright = None


def need(ok: bool, reason: str):
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs it)")
        pytest.skip(reason)


def need_browser():
    need(sync_playwright is not None, "playwright is not installed (pip install -r requirements.txt)")
    need(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")


@contextmanager
def launched():
    """A headless Chromium (closed on exit)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def studio_page(browser, url: str, workdir=None):
    """A fresh page (a new browser context: a new owner token) on the studio at `url`, once the page
    has made its owner token."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(T)
    page.workdir = workdir
    page.goto(url)
    expect(page.locator("#task")).to_be_visible()
    page.wait_for_function("() => !!window.localStorage.getItem('adapt-studio-owner')")
    try:
        yield page
    finally:
        context.close()


def tab(page, name: str):
    page.get_by_role("tab", name=re.compile(name)).click()
