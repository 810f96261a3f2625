"""The dashboard in a real headless Chromium, fed by a real Mosquitto and simulated devices.

``edge-fleet serve`` runs as its own process; the devices are ``SimulatedDevice``s (plain
paho clients with a last will, retained status, metrics and an OTA answer). Every check waits
on the DOM (the live regions arrive over server-sent events, no reloads) and saves a
screenshot under ``test-artifacts/screenshots/<test>/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, publish_once
from agent.fleet.simulator import Behaviour, Script, SimSpec, Simulator
from tests.broker import Broker
from tests.browser import artefacts_dir, chromium, screenshot, wait_for
from tests.fleet.support import SimulatedDevice, make_announcement, retained_announcement
from tests.fleet.web.dashboard import DashboardProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


_ROWS_JS = """
return Array.from(document.querySelectorAll('#devices tr[data-device]')).map(tr => [
  tr.getAttribute('data-device'),
  tr.querySelector('td.state').textContent.trim(),
  tr.querySelector('td.version').textContent.trim()]);
"""


def _rows(driver: WebDriver) -> dict[str, tuple[str, str]]:
    """Device -> (state cell text, version cell text) of the devices table as shown, read in
    one script call (the live region may be swapped between two WebDriver calls)."""
    rows = driver.execute_script(_ROWS_JS)
    return {str(d): (str(state), str(version)) for d, state, version in rows}


def _text(driver: WebDriver, element_id: str) -> str:
    """An element's text in one script call ('' when it is not there)."""
    got = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';",
        element_id,
    )
    return " ".join(str(got).split())


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
        wait_for(
            browser,
            lambda d: _text(d, "state") == "online" and _text(d, "model") == "demo 1.0.0",
            "dev-a",
        )
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
        wait_for(browser, lambda d: _text(d, "rollout-state") == "aborted", "the rollout aborted")
        reason = _text(browser, "abort-reason")
        # the first refusal is already more than 20 % of the two lab devices
        assert re.fullmatch(
            r"([12]) of 2 device\(s\) failed \(> 20%\): refused \(bad_signature\) x\1; "
            r"cleared the channel",
            reason,
        ), reason
        failures = _text(browser, "failures")
        assert "refused (bad_signature)" in failures, failures
        assert "dev-a" in failures or "dev-b" in failures, failures
        events = _text(browser, "events")
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


def _seqs(driver: WebDriver) -> list[int]:
    """Sequence numbers of the live predictions shown (newest first)."""
    got = driver.execute_script(
        "return Array.from(document.querySelectorAll('#predictions tr[data-seq]'))"
        ".map(tr => Number(tr.getAttribute('data-seq')));"
    )
    return [int(x) for x in got]


def _summary(driver: WebDriver) -> str:
    return _text(driver, "summary")


def test_simulated_fleet_paging_offline_and_an_operator_abort(
    broker: Broker, browser: WebDriver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """120 simulated devices (agent.fleet.simulator) on two versions, a few of which drop off
    the network: server-side paging and filters show the right devices, the offline ones
    turn offline on the page, and a rollout whose devices are still installing is aborted
    with the page's button (the channel is cleared again)."""
    shots = artefacts_dir(request.node.name)
    old = SimSpec(devices=100, id_prefix="a-", groups=("lab", "field"), install_s=600.0)
    new = SimSpec(
        devices=20,
        id_prefix="b-",
        version="1.1.0",
        groups=("lab",),
        scripts=(Script(Behaviour.OFFLINE, 0.2, "2"),),
        prediction_rate=2.0,
        metrics_interval_s=1.0,
    )
    sims = [Simulator(spec, broker.host, broker.port) for spec in (old, new)]
    gone = {d.device for d in sims[1].devices if d.behaviour is Behaviour.OFFLINE}
    assert gone
    try:
        for sim in sims:
            sim.start()
        with DashboardProcess(broker, tmp_path / "dash") as dash:
            browser.get(dash.url + "/devices")
            wait_for(browser, lambda d: "120 device(s) match, page 1 of 3" in _summary(d), "120")
            wait_for(browser, lambda d: len(_rows(d)) == 50, "50 rows a page")
            screenshot(browser, shots, "devices-page-1")
            browser.get(browser.find_element(By.ID, "next").get_attribute("href") or "")
            wait_for(
                browser,
                lambda d: "page 2 of 3" in _summary(d) and min(_rows(d)) == "a-00050",
                "page 2",
            )

            browser.get(dash.url + "/devices?version=1.1.0")
            wait_for(
                browser,
                lambda d: len(_rows(d)) == 20 and {v for _, v in _rows(d).values()} == {"1.1.0"},
                "the 20 devices on 1.1.0",
            )

            browser.get(dash.url + "/devices?state=offline&per_page=100")
            wait_for(browser, lambda d: set(_rows(d)) == gone, f"offline: {sorted(gone)}")
            screenshot(browser, shots, "devices-offline")

            # a device's page: its predictions as they arrive, its rate over time as a chart
            live = min({d.device for d in sims[1].devices} - gone)
            browser.get(f"{dash.url}/devices/{live}")
            first = wait_for(browser, lambda d: _seqs(d) or None, "live predictions")
            wait_for(browser, lambda d: _seqs(d) and _seqs(d)[0] > first[0], "a newer one")
            wait_for(
                browser,
                lambda d: d.execute_script(
                    "return document.querySelectorAll('svg.chart polyline').length"
                ),
                "the rate chart drawn",
            )
            screenshot(browser, shots, "device-live")

            # a rollout to the lab group whose devices take minutes to install: abort it
            publish_once(
                MqttSection(host=broker.host, port=broker.port),
                "seed",
                [
                    OutgoingMessage(
                        "edge/ota/staging/demo",
                        make_announcement("demo", "1.2.0", "staging").to_bytes(),
                        1,
                        True,
                    )
                ],
            )
            browser.get(dash.url + "/rollouts")
            for field, value in (
                ("r-model", "demo"),
                ("r-from", "staging"),
                ("r-groups", "lab"),
                ("r-discover", "2"),
            ):
                browser.find_element(By.ID, field).send_keys(value)
            browser.find_element(By.ID, "r-start").click()
            wait_for(
                browser,
                lambda d: (
                    "pending of" in d.find_element(By.ID, "progress").text
                    and d.find_element(By.ID, "rollout-state").text == "running"
                ),
                "the rollout running",
            )
            screenshot(browser, shots, "rollout-running")
            wait_for(browser, lambda d: d.find_element(By.ID, "abort"), "the abort button").click()
            wait_for(
                browser,
                lambda d: (
                    _text(d, "abort-reason") == "aborted by the operator; cleared the channel"
                ),
                "aborted by the operator",
            )
            assert _text(browser, "rollout-state") == "aborted"
            screenshot(browser, shots, "rollout-aborted")
        assert retained_announcement(broker, "edge/ota/canary/demo") is None
    finally:
        for sim in sims:
            sim.stop(clear=True)
