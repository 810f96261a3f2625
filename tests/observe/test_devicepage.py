"""The device page (``GET /`` on the local HTTP API) in a real headless Chromium, served by a
real agent process: it shows the device, model and version, health and the last predictions,
and refreshes itself (the sequence numbers move on without a reload). With a token, the page
asks for it and then shows the same."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.observe.devicepage import page
from agent.release.signing import generate_keypair
from tests.agentproc import REPO, AgentProcess, write_config
from tests.broker import Broker, free_port, wait_for_port
from tests.browser import artefacts_dir, chromium, screenshot, wait_for
from tests.fleet.support import agent_config


def test_the_page_is_not_loaded_at_start() -> None:
    """Starting the HTTP API imports nothing of the page (RSS and start-up stay as they were);
    the first request reads it, later ones get the same bytes."""
    code = (
        "import sys, agent.observe.wiring, agent.observe.httpapi; "
        "print('agent.observe.devicepage' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert page() is page() and page().startswith(b"<!doctype html>")
    assert b"REFRESH_MS" not in page() and b'fetch("/status"' in page()


def _seqs(driver: WebDriver) -> list[int]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tr")[1:]
    return [int(r.find_elements(By.TAG_NAME, "td")[0].text) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_device_page_in_a_browser(
    broker: Broker, tmp_path: Path, token: str | None, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    http: dict[str, object] = {"enabled": True, "port": port}
    if token:
        (tmp_path / "token").write_text(token)
        http["token_file"] = str(tmp_path / "token")
    tables: dict[str, object] = {"http": http}
    if not token:  # with OTA on, the page shows the updater's state
        _, pub = generate_keypair()
        (tmp_path / "trusted.pem").write_bytes(pub)
        tables["ota"] = {
            "enabled": True,
            "channels": ["canary"],
            "trusted_keys": [str(tmp_path / "trusted.pem")],
        }
    cfg = agent_config(tmp_path, broker, "dev-page", groups=["lab"], **tables)
    config = write_config(tmp_path / "agent.toml", cfg)
    with AgentProcess(config, tmp_path / "agent.log") as agent, chromium(tmp_path) as driver:
        wait_for_port(port, timeout=60)
        # the page itself needs no token (it holds no data); /status does
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            assert r.read() == page()
        driver.get(f"http://127.0.0.1:{port}/")
        if token:
            wait_for(driver, lambda d: d.find_element(By.ID, "auth").is_displayed(), "token ask")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
            assert err.value.code == 401
            err.value.close()
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.ID, "save-token").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "device").text == "dev-page", "device")
        assert driver.find_element(By.ID, "model").text == "demo"
        assert driver.find_element(By.ID, "version").text == "1.0.0"
        assert driver.find_element(By.ID, "groups").text == "lab"
        wait_for(driver, lambda d: d.find_element(By.ID, "health").text == "ok", "healthy")
        if token:
            assert driver.find_element(By.ID, "ota").text == "off"
        else:
            wait_for(
                driver,
                lambda d: d.find_element(By.ID, "ota-state").text.startswith("idle 1.0.0"),
                "the OTA state",
            )
            assert driver.find_element(By.ID, "ota").text == "canary"
        first = wait_for(driver, lambda d: _seqs(d) or None, "predictions shown")
        wait_for(driver, lambda d: _seqs(d) and _seqs(d)[0] > first[0], "a later prediction")
        assert _seqs(driver) == sorted(_seqs(driver), reverse=True)  # newest first
        screenshot(
            driver, artefacts_dir(request.node.name), f"device-page{'-token' if token else ''}"
        )
        assert agent.alive()
