"""A real headless Chromium for the browser tests: Debian's ``chromium`` driven through its
``chromedriver`` by Selenium (scripts/test installs both; nothing is downloaded at run time).

Tests wait on DOM conditions (``wait_for``), never on fixed sleeps, and save a screenshot of
every page they check under ``test-artifacts/screenshots/<test>/`` in the checkout
(gitignored; ``EDGE_TEST_ARTIFACTS`` moves it): the artefacts of the last run, which CI can
keep. Not pytest's tmp dir: its retention removes it when other runs follow.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")

DEADLINE_S = 60.0
"""Generous: the suite runs on a busy 2-core machine."""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    raise RuntimeError(
        f"none of {names} is installed: scripts/test installs Debian's chromium and "
        "chromium-driver (apt-get install chromium chromium-driver)"
    )


@contextmanager
def chromium(artefacts: Path) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile; closed on exit."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = _binary("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={artefacts / 'profile'}",
    ):
        opts.add_argument(arg)
    service = Service(executable_path=_binary("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T | None], what: str) -> T:
    """Wait (up to ``DEADLINE_S``) until ``condition(driver)`` is truthy; its value."""

    def check(d: WebDriver) -> T | None:
        try:
            return condition(d)
        except StaleElementReferenceException:  # the live region was swapped meanwhile
            return None

    result = WebDriverWait(driver, DEADLINE_S, poll_frequency=0.2).until(
        check, f"waiting for {what}"
    )
    assert result is not None
    return result


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def artefacts_dir(test: str) -> Path:
    """``test-artifacts/screenshots/<test>`` (emptied first: the last run's pictures)."""
    root = Path(os.environ.get("EDGE_TEST_ARTIFACTS") or ARTIFACTS)
    folder = root / "screenshots" / re.sub(r"[^A-Za-z0-9_.-]+", "_", test)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver: WebDriver, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
