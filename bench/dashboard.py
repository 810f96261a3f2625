"""The dashboard with a big fleet: page load times with 10,000 simulated devices (issue 19).

``agent.fleet.simulator`` brings up ``DEVICES`` real MQTT clients (retained status, metrics
every ``METRICS_S``, predictions) on the bench's Mosquitto; ``edge-fleet serve`` runs as its
own process against it. Once the dashboard has every device, each page is fetched
``repeat`` times over HTTP (time to the last byte: server-side paging, filtering and
rendering) and loaded in headless Chromium (Navigation Timing: request start to the load
event, so parsing and layout count too). The reference is the dashboard's ``/healthz``
(the same server and connection path, no fleet work) timed in the same run.

The figures are informational: the issue asks for the page to stay usable at 10,000
devices and for the load time to be measured, not for a particular number.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from selenium.webdriver.remote.webdriver import WebDriver

from bench.context import Context
from bench.procs import PYTHON, REPO
from bench.report import Row

DEVICES = 10_000
METRICS_S = 60.0
PAGES = {
    "devices page 1": "/devices",
    "devices filtered (group + state, page 3)": "/devices?group=lab&state=online&page=3",
    "devices offline only": "/devices?state=offline",
    "one device": "/devices/sim-00100",
    "devices JSON page": "/api/devices?page=100",
}


def _fetch(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
    return time.perf_counter() - t0


def _browser_load_s(driver: WebDriver, url: str) -> float:
    driver.get(url)
    timing = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.requestStart, n.responseEnd, n.loadEventEnd];"
    )
    return float(timing[2] - timing[0]) / 1000.0


def run(ctx: Context) -> list[Row]:
    from agent.fleet.simulator import SimSpec, Simulator
    from tests.broker import free_port
    from tests.browser import chromium

    n = 500 if ctx.smoke else DEVICES
    reps = 2 if ctx.smoke else max(5, ctx.repeat)
    # one simulator (one network thread for every device); no predictions (the dashboard
    # takes a device's predictions only while its page is open), long keepalives so a busy
    # machine does not drop clients
    spec = SimSpec(
        devices=n,
        groups=("lab", "field"),
        metrics_interval_s=METRICS_S,
        prediction_rate=0.0,
        keepalive=600,
    )
    sims = [Simulator(spec, ctx.broker.host, ctx.broker.port)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workdir = ctx.workdir / "dashboard"
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "serve.log").open("wb")
    argv = [PYTHON, "-m", "agent.fleet.cli", "serve", "--host", ctx.broker.host]
    argv += ["--port", str(ctx.broker.port), "--http-port", str(port), "--read-only"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    rows: list[Row] = []
    try:
        t0 = time.monotonic()
        for sim in sims:
            sim.start()
        for sim in sims:
            if not sim.wait_online(sim.spec.devices, 600):
                raise RuntimeError(f"simulator: {sim.online} of {sim.spec.devices} online")
        total = 0
        while total < n:  # the dashboard takes in the retained messages
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError(f"dashboard has {total} of {n} devices")
            try:
                with urllib.request.urlopen(base + "/api/devices?per_page=1", timeout=30) as r:
                    total = int(json.loads(r.read())["total"])
            except OSError:
                pass
            time.sleep(0.5)  # polling another process's progress: nothing to await
        ready = time.monotonic() - t0
        health = statistics.median(_fetch(base + "/healthz") for _ in range(reps))
        with chromium(workdir) as driver:
            for name, path in PAGES.items():
                server, browser = [], []
                for _ in range(reps):
                    server.append(_fetch(base + path))
                    browser.append(_browser_load_s(driver, base + path))
                s, b = statistics.median(server), statistics.median(browser)
                rows.append(
                    Row(
                        f"19 dashboard {name}",
                        "ms",
                        s * 1000,
                        {"healthz": health * 1000, "browser load": b * 1000},
                        s / health,
                        "usable (informational)",
                        True,
                        f"{n} simulated devices ({METRICS_S:g} s metrics), {path}: server "
                        + "/".join(f"{v * 1000:.0f}" for v in server)
                        + " ms, browser load "
                        + "/".join(f"{v * 1000:.0f}" for v in browser)
                        + f" ms; fleet up and taken in after {ready:.0f} s",
                        info=True,
                    )
                )
    finally:
        for sim in sims:
            sim.stop(clear=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def main() -> None:
    """``python -m bench.dashboard``: the family on its own, with its own broker."""
    import tempfile

    from bench.report import table
    from tests.broker import Broker

    workdir = Path(tempfile.mkdtemp(prefix="dashboard-"))
    with Broker(workdir / "broker") as broker:
        ctx = Context(workdir, False, 5, 0.0, broker)
        print(table(run(ctx)))


if __name__ == "__main__":
    main()
