"""The dashboard without a browser: the state behind the pages, paging and filters, the
event stream, charts and the credentials check, served by a real uvicorn on a free port."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from agent.errors import ConfigError
from agent.fleet.web.app import create_app
from agent.fleet.web.auth import Credentials, load_credentials
from agent.fleet.web.state import HISTORY_S, Dashboard
from agent.fleet.web.svg import line_chart
from agent.wire.ota import OtaStateV1, Refusal
from tests.broker import free_port
from tests.fleet.support import make_announcement

NOW = 1_800_000_000.0


def metrics(
    device: str, version: str, groups: list[str], ts: float = NOW, rate: float = 1.5
) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "groups": groups,
            "ota_channels": ["canary"],
            "ts": ts,
            "agent_version": "0.1.0",
            "model": {"name": "demo", "version": version},
            "rates": {"samples_per_s": 10.0, "predictions_per_s": rate},
            "queue": {"depth": 2, "dropped": 0},
            "latency_ms": {"invoke": {"p50": 0.5, "p95": 1.0, "p99": 2.0}},
        }
    ).encode()


def fleet(n: int = 25) -> Dashboard:
    dash = Dashboard("edge", clock=lambda: NOW)
    for i in range(n):
        dev = f"dev-{i:03d}"
        dash.handle(f"edge/{dev}/status", b"offline" if i % 5 == 0 else b"online")
        dash.handle(
            f"edge/{dev}/metrics",
            metrics(dev, "1.1.0" if i % 2 else "1.0.0", ["lab" if i < 10 else "field"]),
        )
    return dash


@pytest.fixture
def served() -> Iterator[Any]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def serve(app: Any) -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        servers.append((server, t))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)  # uvicorn has no event to await for "started"
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, t in servers:
        server.should_exit = True
        t.join(10)


def get(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, str, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), exc.headers


def test_query_filters_and_pages_on_the_server() -> None:
    dash = fleet(25)
    page = dash.query(per_page=10)
    assert (page.total, page.pages, [d.device for d in page.devices][:2]) == (
        25,
        3,
        ["dev-000", "dev-001"],
    )
    last = dash.query(per_page=10, page=99)  # clamped to the last page
    assert last.page == 3 and len(last.devices) == 5
    assert {d.device for d in dash.query(state="offline").devices} == {
        f"dev-{i:03d}" for i in range(0, 25, 5)
    }
    lab_new = dash.query(group="lab", version="1.1.0").devices
    assert [d.device for d in lab_new] == ["dev-001", "dev-003", "dev-005", "dev-007", "dev-009"]
    assert dash.query(search="02").total == 6  # dev-002, dev-012, dev-020..dev-024
    assert dash.facets(dash.view.devices()) == (["field", "lab"], ["1.0.0", "1.1.0"])


def test_history_ota_events_predictions_and_releases() -> None:
    dash = fleet(1)
    dash.handle("edge/dev-000/metrics", metrics("dev-000", "1.0.0", [], ts=NOW + HISTORY_S + 10))
    assert [p.ts for p in dash.history("dev-000")] == [NOW + HISTORY_S + 10]  # an hour kept
    refusal = Refusal(
        version="1.2.0", reason="bad_signature", detail="x", source="channel:canary", at=NOW
    )
    state = OtaStateV1(
        device="dev-000",
        model="demo",
        state="idle",
        version="1.0.0",
        running="1.0.0",
        refusal=refusal,
        ts=NOW,
    )
    for _ in range(2):  # the same retained state twice is one event
        dash.handle("edge/dev-000/ota", state.model_dump_json().encode())
    events = dash.ota_history("dev-000")
    assert (
        len(events) == 1
        and events[0].refusal is not None
        and events[0].refusal.reason == "bad_signature"
    )
    batch = {"v": 1, "device": "dev-000", "batch": [{"seq": 1}, {"seq": 2}]}
    dash.handle("edge/dev-000/prediction/demo", json.dumps(batch).encode())
    assert [p["seq"] for p in dash.predictions("dev-000")] == [1, 2]
    ann = make_announcement("demo", "1.3.0", "canary")
    dash.handle("edge/ota/canary/demo", ann.to_bytes())
    dash.handle("edge/ota/stable/demo", b"{not json")
    rel = {r.channel: r for r in dash.releases()}
    assert rel["canary"].manifest is not None and rel["canary"].manifest.version == "1.3.0"
    assert rel["stable"].manifest is None and rel["stable"].problem
    dash.handle("edge/ota/canary/demo", b"")  # cleared
    assert [r.channel for r in dash.releases()] == ["stable"]


def test_line_chart_draws_runs_and_gaps() -> None:
    svg = line_chart(
        "rate",
        [("r", [(10.0, 1.0), (20.0, 2.0), (30.0, None), (40.0, 1.0)])],
        start=0.0,
        end=60.0,
        unit="/s",
    )
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1  # a gap splits the line
    assert "no data yet" in line_chart("rate", [("r", [])], start=0.0, end=60.0, unit="/s")
    assert "&lt;b&gt;" in line_chart("<b>", [], start=0.0, end=1.0, unit="")


def test_pages_api_and_event_stream(served: Any) -> None:
    dash = fleet(25)
    url = served(create_app(dash, None))
    status, body, _ = get(url + "/devices?state=offline")
    assert status == 200 and body.count('data-device="') == 5
    status, body, _ = get(url + "/api/devices?group=lab&per_page=4&page=2")
    obj = json.loads(body)
    assert (obj["total"], obj["pages"], [d["device"] for d in obj["devices"]]) == (
        10,
        3,
        ["dev-004", "dev-005", "dev-006", "dev-007"],
    )
    assert obj["devices"][1]["state"] == "offline" and obj["devices"][1]["version"] == "1.1.0"
    assert get(url + "/devices/dev-001")[0] == 200
    assert get(url + "/devices/nope")[0] == 404
    assert get(url + "/devices/a+b")[0] == 404  # not a topic id: never subscribed to
    assert get(url + "/releases/canary/demo")[0] == 404
    assert get(url + "/rollouts", data=b"channel=x")[0] == 404  # read-only dashboard

    with urllib.request.urlopen(url + "/devices/events?q=dev-001", timeout=30) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")

        def next_fragment() -> str:
            lines = []
            while True:
                line = stream.readline().decode()
                if line.startswith("data: "):
                    lines.append(line[6:].rstrip("\n"))
                elif line == "\n" and lines:
                    return "\n".join(lines)

        assert '<td class="state online">online' in next_fragment()
        dash.handle("edge/dev-001/status", b"offline")
        deadline = time.monotonic() + 30  # fragments may come first from the older snapshot
        while '<td class="state offline">offline' not in next_fragment():
            assert time.monotonic() < deadline, "the change was never sent"


def test_credentials_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_credentials("0.0.0.0", None, None)
    assert not load_credentials("127.0.0.1", None, None).required
    (tmp_path / "basic").write_text("ops\n")
    with pytest.raises(ConfigError, match="user:password"):
        load_credentials("0.0.0.0", None, tmp_path / "basic")
    (tmp_path / "token").write_text("tok\n")
    assert load_credentials("0.0.0.0", tmp_path / "token", None).token == "tok"


def test_token_and_basic_auth(served: Any) -> None:
    url = served(create_app(fleet(2), None, Credentials(token="tok-123", basic=("ops", "pw"))))
    status, _, headers = get(url + "/devices")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert get(url + "/healthz")[0] == 200
    assert get(url + "/devices", {"Authorization": "Bearer tok-123"})[0] == 200
    assert get(url + "/devices", {"Authorization": "Bearer tok-124"})[0] == 401
    basic = base64.b64encode(b"ops:pw").decode()
    assert get(url + "/devices", {"Authorization": f"Basic {basic}"})[0] == 200
    wrong = base64.b64encode(b"ops:px").decode()
    assert get(url + "/devices", {"Authorization": f"Basic {wrong}"})[0] == 401
    # a browser logs in once with the token: a cookie from then on
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(url + "/login?token=tok-123", timeout=10) as r:
        assert r.status == 200 and r.url.endswith("/devices")
    with opener.open(url + "/devices", timeout=10) as r:
        assert r.status == 200
    # a page elsewhere cannot post with the operator's credentials
    foreign = {"Authorization": "Bearer tok-123", "Origin": "http://evil.example"}
    assert get(url + "/promote", foreign, data=b"model=demo")[0] == 403
