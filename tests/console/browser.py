"""Debian's chromium, headless, driven through Debian's chromedriver by selenium.

Both come from scripts/apt-packages.txt (``chromium``, ``chromium-driver``):
nothing is downloaded at test time (selenium's own driver manager is never
asked, because the driver's path is given, and SE_OFFLINE forbids it anyway).
The flags keep chromium from reaching out to the network, which is closed here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--no-default-browser-check", "--metrics-recording-only", "--hide-scrollbars"]


@contextmanager
def chromium(width: int = 1200, height: int = 1400) -> Iterator[Any]:
    if CHROMIUM is None or not os.path.exists(CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are missing: run make bootstrap (scripts/apt-packages.txt)")
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cc-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: Any, pred: Callable[[Any], Any], timeout: float, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(pred)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; the page says:\n"
                             f"{driver.find_element('tag name', 'body').text}") from None


def text_of(driver: Any, css: str) -> str:
    """The visible text of the first match, read in one step in the page (the live view redraws cards)."""
    got = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return str(got)


def screenshot(driver: Any, name: str, *, whole_page: bool = False) -> Path:
    """Save the window (or, with ``whole_page``, the whole page: the window grows to its height) in test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    if whole_page:
        size = driver.get_window_size()
        driver.set_window_size(size["width"], int(driver.execute_script("return document.documentElement.scrollHeight")) + 40)
    driver.save_screenshot(str(path))
    return path
