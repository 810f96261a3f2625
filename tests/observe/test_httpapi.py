"""The local HTTP API over real sockets: routes, limits, auth, errors; then the real agent.

Most tests serve a fake ``AgentView`` (the seam); the last ones run the real agent in this
process against Mosquitto and compare on-demand predictions with the model run directly.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from agent.app.service import Agent
from agent.config import HttpSection, parse_config
from agent.errors import ConfigError, EdgeAgentError, InferenceError, SampleError, ShapeMismatch
from agent.ingest.samples import make_block
from agent.model.loading import demo_model_bytes
from agent.observe.httpapi import HttpApi, read_token
from agent.observe.prometheus import PROMETHEUS_CONTENT_TYPE
from tests.broker import Broker
from tests.fleet.support import CHANNELS, LABELS, WINDOW, agent_config
from tests.observe.test_telemetry import parse_prometheus

TOKEN = "s3cret-token-0123456789"


class FakeView:
    def __init__(self) -> None:
        self.ready = True
        self.calls: list[tuple[object, str]] = []
        self.block = threading.Event()
        self.entered = threading.Event()

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.ready else "starting", "live": True, "ready": self.ready}

    def status(self) -> dict[str, Any]:
        return {"device": "fake", "model": {"name": "demo", "version": "1.0.0"}}

    def metrics_text(self) -> str:
        return '# HELP x X.\n# TYPE x gauge\nx{device="fake"} 1\n'

    def field(self) -> dict[str, Any]:
        return {"drift": None, "shadow": None}

    def predict(self, samples: object, stream: str) -> dict[str, Any]:
        self.calls.append((samples, stream))
        if stream == "slow":
            self.entered.set()
            self.block.wait(10)
        if stream == "boom":
            raise InferenceError(InferenceError.INVOKE_FAILED, "invoke failed: bad kernel")
        if stream == "nan-out":
            raise InferenceError(
                InferenceError.NON_FINITE, "non-finite output 'y' (NaN or Inf) for stream 'nan-out'"
            )
        if stream == "gone":
            raise EdgeAgentError("the agent is not running")
        if stream == "shape":
            raise ShapeMismatch("model input wants (1, 32, 3)")
        if stream == "bug":
            raise RuntimeError("a bug")
        block = make_block(stream, samples, None, 3)  # the real validation
        if len(block) != 4:
            raise SampleError("wrong_shape", f"expected 4 samples, got {len(block)}")
        return {"outputs": {"label": "normal"}, "stream": stream}


def start_api(view: FakeView, **http: Any) -> HttpApi:
    token = http.pop("token", None)
    api = HttpApi(
        HttpSection(enabled=True, port=0, **http),
        view,
        token=token,
        max_connections=2,
        poll_interval_s=0.02,
    )
    api.start()
    return api


@pytest.fixture
def view() -> FakeView:
    return FakeView()


@pytest.fixture
def api(view: FakeView) -> Iterator[HttpApi]:
    a = start_api(view, max_body_bytes=4096)
    try:
        yield a
    finally:
        view.block.set()
        a.stop()


def request(
    api: HttpApi,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def predict(api: HttpApi, obj: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    status, hdrs, data = request(api, "POST", "/v1/predict", body, headers)
    assert hdrs["content-type"] == "application/json"
    return status, json.loads(data)


GOOD = [[0.1, 0.2, 0.3]] * 4

# --------------------------------------------------------------------------- routes


def test_healthz_status_metrics(api: HttpApi, view: FakeView) -> None:
    status, hdrs, body = request(api, "GET", "/healthz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert hdrs["connection"] == "close" and hdrs["cache-control"] == "no-store"
    view.ready = False
    status, _, body = request(api, "GET", "/healthz")
    assert status == 503 and json.loads(body)["status"] == "starting"
    status, _, body = request(api, "GET", "/status")
    assert status == 200 and json.loads(body)["device"] == "fake"
    status, _, body = request(api, "GET", "/drift")
    assert status == 200 and json.loads(body) == {"drift": None, "shadow": None}
    status, hdrs, body = request(api, "GET", "/metrics")
    assert status == 200 and hdrs["content-type"] == PROMETHEUS_CONTENT_TYPE
    parse_prometheus(body.decode())
    status, hdrs, body = request(api, "HEAD", "/metrics")
    assert status == 200 and body == b"" and int(hdrs["content-length"]) > 0


def test_predict_ok(api: HttpApi, view: FakeView) -> None:
    status, obj = predict(api, {"samples": GOOD, "stream": "cam"})
    assert status == 200 and obj == {"outputs": {"label": "normal"}, "stream": "cam"}
    status, obj = predict(api, {"samples": GOOD})
    assert status == 200 and view.calls[-1][1] == "http"  # the default stream


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        ([[1, 2, 3]], 400, "bad_request"),  # not an object
        ({"values": GOOD}, 400, "bad_request"),  # no samples
        ({"samples": GOOD, "extra": 1}, 400, "bad_request"),
        ({"samples": GOOD, "stream": ""}, 400, "bad_request"),
        ({"samples": GOOD, "stream": 7}, 400, "bad_request"),
        ({"samples": "1,2,3"}, 400, "wrong_shape"),
        ({"samples": [[1, 2]] * 4}, 400, "wrong_shape"),  # 2 channels, not 3
        ({"samples": [[1, 2, 3]] * 5}, 400, "wrong_shape"),  # 5 samples, not one window
        ({"samples": []}, 400, "wrong_shape"),
        ({"samples": [[1, 2, "x"]] * 4}, 400, "non_numeric"),
        ({"samples": [[1, 2, None]] * 4}, 400, "not_finite"),  # make_block: null -> NaN
        (b'{"samples": [[1, 2, NaN], [1, 2, 3], [1, 2, 3], [1, 2, 3]]}', 400, "not_finite"),
        (b'{"samples": [[1, 2, 1e400], [1, 2, 3], [1, 2, 3], [1, 2, 3]]}', 400, "not_finite"),
        ({"samples": GOOD, "stream": "shape"}, 400, "wrong_shape"),
        ({"samples": GOOD, "stream": "boom"}, 500, "invoke_failed"),
        ({"samples": GOOD, "stream": "nan-out"}, 500, "non_finite"),
        ({"samples": GOOD, "stream": "gone"}, 503, "not_ready"),
        ({"samples": GOOD, "stream": "bug"}, 500, "internal_error"),
    ],
)
def test_predict_errors(api: HttpApi, body: Any, status: int, reason: str) -> None:
    got_status, obj = predict(api, body)
    assert (got_status, obj["reason"]) == (status, reason), obj
    assert isinstance(obj["error"], str) and obj["error"]


def test_predict_when_not_ready(api: HttpApi, view: FakeView) -> None:
    view.ready = False
    status, obj = predict(api, {"samples": GOOD})
    assert (status, obj["reason"]) == (503, "not_ready")
    assert view.calls == []


def test_routes_and_methods(api: HttpApi) -> None:
    status, _, body = request(api, "GET", "/nope")
    assert (status, json.loads(body)["reason"]) == (404, "not_found")
    status, hdrs, body = request(api, "GET", "/v1/predict")
    assert (status, json.loads(body)["reason"]) == (405, "method_not_allowed")
    assert hdrs["allow"] == "POST"
    status, hdrs, _ = request(api, "DELETE", "/status")
    assert status == 405 and hdrs["allow"] == "GET"


# --------------------------------------------------------------------------- limits


def test_oversized_body_is_refused_unread(api: HttpApi, view: FakeView) -> None:
    big = json.dumps({"samples": [[1.0, 2.0, 3.0]] * 2000}).encode()
    assert len(big) > 4096
    status, obj = predict(api, big)
    assert (status, obj["reason"]) == (413, "body_too_large")
    assert view.calls == []
    # exactly at the limit is fine (and parsed)
    at_limit = json.dumps({"samples": GOOD}).encode()
    at_limit += b" " * (4096 - len(at_limit))
    status, obj = predict(api, at_limit)
    assert status == 200


def test_oversized_body_refused_before_it_is_sent(api: HttpApi) -> None:
    """``Expect: 100-continue`` (curl does this for big bodies): 413 instead of 100."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["reason"] == "body_too_large"


def test_length_required(api: HttpApi) -> None:
    for extra in (b"", b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 411"), data[:100]
        assert json.loads(data.partition(b"\r\n\r\n")[2])["reason"] == "length_required"


def test_busy_when_all_slots_are_taken(view: FakeView) -> None:
    api = start_api(view)  # max_connections=2
    results: list[int] = []
    try:
        workers = [
            threading.Thread(
                target=lambda: results.append(predict(api, {"samples": GOOD, "stream": "slow"})[0])
            )
            for _ in range(2)
        ]
        for w in workers:
            w.start()
        assert view.entered.wait(5)
        deadline = time.monotonic() + 5
        while len(view.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the second request has no event of its own to await
        status, obj = predict(api, {"samples": GOOD})
        assert (status, obj["reason"]) == (503, "busy")
        view.block.set()
        for w in workers:
            w.join(10)
        assert results == [200, 200]
        assert predict(api, {"samples": GOOD})[0] == 200  # slots are given back
    finally:
        view.block.set()
        api.stop()


def test_slow_client_is_dropped(view: FakeView) -> None:
    api = HttpApi(HttpSection(enabled=True, port=0), view, timeout_s=0.3, poll_interval_s=0.02)
    api.start()
    try:
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            t0 = time.monotonic()
            data = s.recv(65536)  # the server gives up on the missing 49 bytes
            assert time.monotonic() - t0 < 3
        assert data == b"" or data.startswith(b"HTTP/1.1 400")
        assert view.calls == []
    finally:
        api.stop()


def test_slowloris_is_cut_at_the_request_deadline_and_healthz_still_answers(
    view: FakeView,
) -> None:
    """Issue 13 finding 5: 40 connections trickling a byte each held every worker; /healthz
    failed 25 of 25 probes. Now: a whole-request deadline, a per-client cap, and /healthz
    answered on the accept thread when the caps are reached."""
    api = HttpApi(
        HttpSection(enabled=True, port=0),
        view,
        max_connections=2,
        timeout_s=30.0,  # the per-read timeout alone would never fire on a trickle
        request_deadline_s=1.0,
        poll_interval_s=0.02,
    )
    api.start()
    stop = threading.Event()
    cut: list[bool] = []
    request_bytes = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    def trickle() -> None:
        try:
            with socket.create_connection(("127.0.0.1", api.port), timeout=30) as s:
                for i in range(len(request_bytes)):  # 40 s at one byte per 0.2 s
                    if stop.is_set():
                        break
                    s.sendall(request_bytes[i : i + 1])
                    stop.wait(0.2)
                else:
                    cut.append(False)
                    return
        except OSError:
            pass
        cut.append(True)

    clients = [threading.Thread(target=trickle, daemon=True) for _ in range(40)]
    try:
        for c in clients:
            c.start()
        probes = [request(api, "GET", "/healthz")[0] for _ in range(25)]
        assert probes == [200] * 25
        # the slow clients are let go at the deadline: each finds its connection closed
        for c in clients:
            c.join(35)
        assert len(cut) == 40 and all(cut), cut
    finally:
        stop.set()
        api.stop()


def test_a_client_over_its_cap_gets_busy_not_a_hang(view: FakeView) -> None:
    api = start_api(view)  # max_connections=2: two connections per client
    held = [socket.create_connection(("127.0.0.1", api.port), timeout=10) for _ in range(2)]
    try:
        for s in held:
            s.sendall(b"GET /status HTTP/1.1\r\n")  # incomplete: each holds a worker
        status, _, body = request(api, "GET", "/status")
        assert (status, json.loads(body)["reason"]) == (503, "busy")
        assert request(api, "GET", "/healthz")[0] == 200
    finally:
        for s in held:
            s.close()
        api.stop()


# --------------------------------------------------------------------------- auth


def test_token(view: FakeView) -> None:
    api = start_api(view, token=TOKEN)
    try:
        status, hdrs, body = request(api, "GET", "/status")
        assert (status, json.loads(body)["reason"]) == (401, "unauthorized")
        assert hdrs["www-authenticate"] == "Bearer"
        for bad in ("Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", TOKEN):
            assert request(api, "GET", "/metrics", headers={"Authorization": bad})[0] == 401
        status, _ = predict(api, {"samples": GOOD}, {"Authorization": "Bearer nope"})
        assert status == 401 and view.calls == []
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert request(api, "GET", "/status", headers=ok)[0] == 200
        assert predict(api, {"samples": GOOD}, ok)[0] == 200
        assert request(api, "GET", "/healthz")[0] == 200  # liveness probes need no token
    finally:
        api.stop()


def test_read_token(tmp_path: Path) -> None:
    assert read_token(HttpSection()) is None
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert read_token(HttpSection(token_file=tmp_path / "tok")) == TOKEN
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-token").write_text("from-systemd")
    got = read_token(
        HttpSection(token_file=Path("api-token")), {"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert got == "from-systemd"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(HttpSection(token_file=tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"http\.token_file"):
        read_token(HttpSection(token_file=tmp_path / "missing"))


def test_port_in_use_is_a_config_error(view: FakeView) -> None:
    api = start_api(view)
    try:
        clash = HttpApi(HttpSection(enabled=True, port=api.port), view)
        with pytest.raises(ConfigError, match=r"http\.port"):
            clash.start()
    finally:
        api.stop()


# --------------------------------------------------------------------------- the real agent


def direct_scores(window: np.ndarray) -> tuple[np.ndarray, float]:
    """The demo model run with the interpreter itself: quantise, invoke, dequantise; and the
    output's quantisation step."""
    interp = Interpreter(model_content=demo_model_bytes())
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    q = np.clip(np.round(window / s_in + z_in), -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], q.reshape(inp["shape"]))
    interp.invoke()
    y = interp.get_tensor(out["index"]).astype(np.float32)
    return ((y - z_out) * s_out).reshape(-1), float(s_out)


@pytest.fixture
def real_agent(broker: Broker, tmp_path: Path) -> Iterator[Agent]:
    (tmp_path / "token").write_text(TOKEN)
    raw = agent_config(
        tmp_path,
        broker,
        "http-dev",
        http={
            "enabled": True,
            "port": 0,
            "token_file": str(tmp_path / "token"),
            "max_body_bytes": 8192,
        },
        metrics={"interval_s": 0},
    )
    cfg = parse_config(raw)
    agent = Agent(cfg)
    running = agent.build(cfg)
    agent.start(running)
    try:
        yield agent
    finally:
        agent.shutdown(running, final_status=True)


@pytest.mark.slow
def test_real_agent_serves_predictions_like_the_model(real_agent: Agent) -> None:
    agent = real_agent
    assert agent.observability is not None and agent.observability.http is not None
    api = agent.observability.http
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, body = request(api, "GET", "/healthz")
    assert status == 200 and json.loads(body)["live"] is True
    status, _, body = request(api, "GET", "/status", headers=auth)
    st = json.loads(body)
    assert status == 200 and st["device"] == "http-dev" and st["model"]["version"] == "1.0.0"
    assert st["input"] == {"window": WINDOW, "channels": CHANNELS}

    rng = np.random.default_rng(7)
    window = rng.normal(0, 1, (WINDOW, CHANNELS)).astype(np.float32)
    status, obj = predict(api, {"samples": window.tolist(), "stream": "probe"}, auth)
    assert status == 200, obj
    scores, step = direct_scores(window)
    best = int(np.argmax(scores))
    assert obj["model"] == {"name": "demo", "version": "1.0.0"} and obj["stream"] == "probe"
    assert obj["outputs"]["label"] == LABELS[best]
    assert obj["outputs"]["score"] == pytest.approx(float(scores[best]), abs=step + 1e-6)

    # the same validation and error reporting as the sensor path
    status, obj = predict(api, {"samples": window[:10].tolist()}, auth)
    assert (status, obj["reason"]) == (400, "wrong_shape")
    bad = window.tolist()
    bad[3][1] = float("nan")
    status, obj = predict(api, json.dumps({"samples": bad}).encode(), auth)
    assert (status, obj["reason"]) == (400, "not_finite")
    status, obj = predict(api, {"samples": [["a", 1, 2]] * WINDOW}, auth)
    assert (status, obj["reason"]) == (400, "non_numeric")
    status, obj = predict(api, {"samples": window.tolist() * 4}, auth)  # > max_body_bytes
    assert (status, obj["reason"]) == (413, "body_too_large")
    status, obj = predict(api, {"samples": window.tolist()}, {"Authorization": "Bearer x"})
    assert (status, obj["reason"]) == (401, "unauthorized")

    status, _, body = request(api, "GET", "/metrics", headers=auth)
    series, _ = parse_prometheus(body.decode())
    assert series[("edge_agent_on_demand_predictions_total", (("device", "http-dev"),))] == 1
    rejected = {
        dict(labels)["reason"]: v
        for (name, labels), v in series.items()
        if name == "edge_agent_on_demand_rejected_total" and v
    }
    assert rejected == {"wrong_shape": 1, "not_finite": 1, "non_numeric": 1}  # the rest: 0


@pytest.mark.slow
def test_http_api_stops_with_the_agent(real_agent: Agent) -> None:
    agent = real_agent
    assert agent.observability is not None and agent.observability.http is not None
    port = agent.observability.http.port
    assert agent.running is not None
    agent.shutdown(agent.running, final_status=False)
    assert agent.observability is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    agent.start(agent.build(agent.cfg))  # the fixture shuts this one down


# --------------------------------------------------------------------------- the view's health


class _Pipe:
    def __init__(self, alive: bool, finished: bool, heartbeat_age: float) -> None:
        self._alive = alive
        self.finished = threading.Event()
        if finished:
            self.finished.set()
        self.heartbeat = time.monotonic() - heartbeat_age

    def inference_alive(self) -> bool:
        return self._alive


class _Alive:
    def __init__(self, alive: bool = True) -> None:
        self._alive = alive
        self.connected = alive

    def alive(self) -> bool:
        return self._alive

    def thread_alive(self) -> bool:
        return self._alive


@pytest.mark.parametrize(
    ("pipe_args", "link_ok", "ready", "status", "live"),
    [
        ((True, False, 0.5), True, True, "ok", True),
        ((True, False, 0.5), True, False, "starting", True),
        ((False, True, 999), True, True, "ok", True),  # every source ended: still live
        ((True, False, 999), True, True, "unhealthy", False),  # inference loop stuck
        ((False, False, 0.5), True, True, "unhealthy", False),  # inference thread died
        ((True, False, 0.5), False, True, "unhealthy", False),  # MQTT link thread died
    ],
)
def test_view_health(
    pipe_args: tuple[bool, bool, float], link_ok: bool, ready: bool, status: str, live: bool
) -> None:
    from types import SimpleNamespace

    pipe = _Pipe(*pipe_args)  # built here: a heartbeat made at collection time would be stale

    from agent.metrics import Metrics
    from agent.observe.view import STALL_S, RunningAgentView

    running = SimpleNamespace(pipeline=pipe, publisher=_Alive(), link=_Alive(link_ok))
    agent = SimpleNamespace(
        cfg=None, metrics=Metrics(), ready=threading.Event(), running=running, stall_s=STALL_S
    )
    if ready:
        agent.ready.set()
    h = RunningAgentView(agent).health()
    assert (h["status"], h["live"], h["ready"]) == (status, live, ready)
    agent.running = None
    assert RunningAgentView(agent).health()["status"] == "starting"
