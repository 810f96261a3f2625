"""The dashboard in a real headless Chromium, fed by a real Mosquitto and simulated devices.

``edge-fleet serve`` runs as its own process; the devices are ``SimulatedDevice``s (plain
paho clients with a last will, retained status, metrics and an OTA answer). Every check waits
on the DOM (the live regions arrive over server-sent events, no reloads) and saves a
screenshot under ``test-artifacts/screenshots/<test>/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from tests.broker import Broker
from tests.browser import artefacts_dir, chromium, screenshot, wait_for
from tests.fleet.support import SimulatedDevice, make_announcement, retained_announcement
from tests.fleet.web.dashboard import DashboardProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


def _rows(driver: WebDriver) -> dict[str, tuple[str, str]]:
    """Device -> (state cell text, version cell text) of the devices table as shown."""
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#devices tr[data-device]"):
        state = tr.find_element(By.CSS_SELECTOR, "td.state").text
        version = tr.find_element(By.CSS_SELECTOR, "td.version").text
        out[tr.get_attribute("data-device") or ""] = (state, version)
    return out


def test_devices_page_lists_devices_and_shows_one_going_offline(
    broker: Broker, browser: WebDriver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    shots = artefacts_dir(request.node.name)
    fleet = {
        "dev-a": (["lab"], "1.0.0"),
        "dev-b": (["lab"], "1.1.0"),
        "dev-c": (["field"], "1.0.0"),
    }
    with ExitStack() as stack:
        devices = {
            name: stack.enter_context(SimulatedDevice(broker, name, groups, version=version))
            for name, (groups, version) in fleet.items()
        }
        dash = stack.enter_context(DashboardProcess(broker, tmp_path / "dash"))
        browser.get(dash.url + "/devices")
        want = {name: ("online", version) for name, (_, version) in fleet.items()}
        wait_for(browser, lambda d: _rows(d) == want, f"devices {want}")
        screenshot(browser, shots, "devices")

        # a stable URL per view: the lab group's devices on version 1.1.0
        browser.get(dash.url + "/devices?group=lab&version=1.1.0")
        wait_for(browser, lambda d: _rows(d) == {"dev-b": ("online", "1.1.0")}, "filtered")
        screenshot(browser, shots, "devices-filtered")

        browser.get(dash.url + "/devices")
        wait_for(browser, lambda d: _rows(d) == want, "all devices again")
        devices["dev-c"].crash()  # the broker publishes its last will: offline
        wait_for(
            browser,
            lambda d: _rows(d).get("dev-c", ("", ""))[0] == "offline",
            "dev-c shown offline without a reload",
        )
        assert _rows(browser)["dev-a"] == ("online", "1.0.0")
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates")
        screenshot(browser, shots, "devices-offline")

        browser.get(dash.url + "/devices?state=offline")
        wait_for(browser, lambda d: _rows(d) == {"dev-c": ("offline", "1.0.0")}, "offline only")

        # the device page: its facts, the chart and the OTA history section
        browser.get(dash.url + "/devices/dev-a")
        wait_for(browser, lambda d: d.find_element(By.ID, "state").text == "online", "dev-a")
        assert browser.find_element(By.ID, "model").text == "demo 1.0.0"
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        screenshot(browser, shots, "device")


def test_rollout_started_from_the_page_aborts_on_refusals(
    broker: Broker, browser: WebDriver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two lab devices refuse the new version (bad signature): more than the allowed share
    failed, so the rollout aborts and the canary channel is cleared again."""
    shots = artefacts_dir(request.node.name)
    staging = make_announcement("demo", "1.1.0", "staging")
    publish_once(
        MqttSection(host=broker.host, port=broker.port),
        "seed",
        [OutgoingMessage("edge/ota/staging/demo", staging.to_bytes(), 1, True)],
    )
    with ExitStack() as stack:
        for name in ("dev-a", "dev-b"):
            stack.enter_context(SimulatedDevice(broker, name, ["lab"], answer="refused"))
        stack.enter_context(SimulatedDevice(broker, "dev-c", ["field"], answer="active"))
        dash = stack.enter_context(DashboardProcess(broker, tmp_path / "dash"))
        browser.get(dash.url + "/devices")
        wait_for(browser, lambda d: len(_rows(d)) == 3, "three devices")

        browser.get(dash.url + "/rollouts")
        for field, value in (
            ("r-model", "demo"),
            ("r-from", "staging"),
            ("r-groups", "lab"),
            ("r-max-fail", "0.2"),
            ("r-discover", "3"),
        ):
            el = browser.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)
        screenshot(browser, shots, "rollout-form")
        browser.find_element(By.ID, "r-start").click()

        wait_for(browser, lambda d: "/rollouts/1" in d.current_url, "the rollout's page")
        wait_for(
            browser,
            lambda d: d.find_element(By.ID, "rollout-state").text == "aborted",
            "the rollout aborted",
        )
        reason = browser.find_element(By.ID, "abort-reason").text
        assert "failed" in reason and "cleared the channel" in reason, reason
        failures = browser.find_element(By.ID, "failures").text
        assert "bad_signature" in failures and "dev-a" in failures, failures
        events = browser.find_element(By.ID, "events").text
        assert "announced demo 1.1.0 on canary" in events, events
        assert "dev-c" not in failures  # not in the lab group: not targeted
        screenshot(browser, shots, "rollout-aborted")

        browser.get(dash.url + "/rollouts")
        wait_for(
            browser,
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "tr[data-rollout='1']").get_attribute("data-state")
                == "aborted"
            ),
            "the rollouts list",
        )
    assert retained_announcement(broker, "edge/ota/canary/demo") is None
