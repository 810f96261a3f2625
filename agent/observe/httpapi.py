"""The local HTTP API: health, metrics, status and on-demand inference for programs on the device.

Off by default (``[http] enabled``), bound to 127.0.0.1 unless configured otherwise. The standard
library's ``ThreadingHTTPServer``: no web framework on a Pi for four routes.

    GET  /             the device's status page (HTML, agent/observe/devicepage.py; reads /status)
    GET  /healthz      200 when live and ready, 503 otherwise (JSON body says which check failed)
    GET  /metrics      Prometheus text (exposition format 0.0.4)
    GET  /status       JSON: device, model, broker connection, queue, the metrics snapshot
    GET  /drift        JSON: drift scores (``DriftV1``) and the shadow report, if any
    POST /v1/predict   {"samples": [[c0, c1, ...], ...], "stream": "name"} -> one prediction

Limits, because anything on the device can connect: request bodies above
``http.max_body_bytes`` are refused before they are read (413); a body needs a Content-Length
(411); at most ``max_connections`` requests do work at once, the rest get 503 ``busy``.
Every response closes its connection. Against slow clients (a slowloris trickling a byte a
second), the whole request, headers and body, must arrive within ``request_deadline_s``: a
per-read socket timeout alone never fires on such a client. At most ``max_per_client``
connections per client address are served by a thread, and at most ``CONNECTION_FACTOR`` x
``max_connections`` in all; a connection over either cap is handed to one overflow thread (a
selector over all of them, each with ``OVERFLOW_READ_S`` to send its request line): ``GET
/healthz`` gets its answer, anything else 503 ``busy``. So ``/healthz`` answers even when every
worker is held, and neither the accept thread nor a worker waits for a slow client.

With ``http.token_file`` set, every route except ``/`` (a page without data) and ``/healthz``
needs ``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise).

Errors are JSON ``{"error": "<message>", "reason": "<stable label>"}``: 400 for bad input
(``bad_json``, ``bad_request``, ``wrong_shape``, ``non_numeric``, ``not_finite``), 401
``unauthorized``, 404 ``not_found``, 405 ``method_not_allowed``, 411 ``length_required``, 413
``body_too_large``, 500 ``inference_failed`` / ``non_finite`` / ``internal_error``, 503
``not_ready`` / ``busy``.

The server talks to the agent only through the ``AgentView`` protocol (``agent/view.py``
implements it on the running agent; tests use a fake).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import io
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from agent.config import HttpSection
from agent.errors import ConfigError, EdgeAgentError, InferenceError, SampleError, ShapeMismatch
from agent.observe.prometheus import PROMETHEUS_CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_STREAM_NAME = 128
_JSON = "application/json"
_DRAIN_MAX = 8 * 1024 * 1024  # refused bodies read and discarded at most
CONNECTION_FACTOR = 4  # open connections allowed per concurrent request
OVERFLOW_READ_S = 2.0  # how long an over-cap client gets to send its request line
OVERFLOW_MAX = 64  # over-cap connections waiting at once (one thread serves them all)


class AgentView(Protocol):
    """What the HTTP API needs from the agent."""

    def health(self) -> dict[str, Any]:
        """JSON-able; must hold ``live`` and ``ready`` booleans."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-able description of the running agent."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition."""
        ...

    def field(self) -> dict[str, Any]:
        """JSON-able drift scores and shadow report (``GET /drift``)."""
        ...

    def predict(self, samples: object, stream: str) -> dict[str, Any]:
        """Run one window (``samples``: window-length rows of channel values, as JSON gave
        them). Raises ``SampleError`` / ``ShapeMismatch`` for bad input, ``InferenceError``
        when the model fails, another ``EdgeAgentError`` when the agent cannot serve now."""
        ...


def read_token(settings: HttpSection, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from ``http.token_file`` (systemd credentials directory first)."""
    path = settings.token_file
    if path is None:
        return None
    env = os.environ if environ is None else environ
    candidates = [path]
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and not path.is_absolute():
        candidates.insert(0, Path(cred_dir) / path)
    for cand in candidates:
        try:
            token = cand.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if not token:
            raise ConfigError([("http.token_file", f"{cand} is empty")])
        return token
    raise ConfigError([("http.token_file", f"cannot read {path}")])


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _Server(ThreadingHTTPServer):
    """Two bounds: ``max_connections`` requests do work at once (the rest get 503 ``busy``
    after their request was read, so the client sees a clean answer), and at most
    ``CONNECTION_FACTOR`` times that many connections are open (beyond that, a flood: closed
    unanswered, no thread started)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, api: HttpApi, address: tuple[str, int], family: socket.AddressFamily):
        self.address_family = family
        self.api = api
        self._work = threading.BoundedSemaphore(api.max_connections)
        self._conns = threading.BoundedSemaphore(api.max_connections * CONNECTION_FACTOR)
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def _admit(self, client: str) -> bool:
        """Take a connection slot for ``client`` (per-client and overall caps)."""
        with self._lock:
            if self._per_client.get(client, 0) >= self.api.max_per_client:
                return False
            if not self._conns.acquire(blocking=False):
                return False
            self._per_client[client] = self._per_client.get(client, 0) + 1
            return True

    def _leave(self, client: str) -> None:
        with self._lock:
            n = self._per_client.get(client, 0) - 1
            if n > 0:
                self._per_client[client] = n
            else:
                self._per_client.pop(client, None)
            self._conns.release()

    @contextlib.contextmanager
    def work_slot(self) -> Iterator[None]:
        if not self._work.acquire(blocking=False):
            raise _ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE, "busy", "too many requests at once; retry shortly"
            )
        try:
            yield
        finally:
            self._work.release()

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        if not self._admit(client):
            try:
                self.api.overflow.add(request)
            finally:
                self.close_request(request)  # only this handle: the overflow thread owns a dup
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave(str(client_address[0]))


def _overflow_reply(view: AgentView, head: bytes) -> bytes:
    """The answer to an over-cap connection: ``/healthz``, or 503 ``busy``."""
    line = head.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0] in (b"GET", b"HEAD") and line[1] == b"/healthz":
        h = view.health()
        ok = bool(h.get("live")) and bool(h.get("ready"))
        status, body = (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), h
    else:
        status = HTTPStatus.SERVICE_UNAVAILABLE
        body = {"error": "too many connections; retry shortly", "reason": "busy"}
    data = json.dumps(body, allow_nan=False).encode()
    reply = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {_JSON}\r\n"
        f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return reply if line and line[0] == b"HEAD" else reply + data


class _Overflow:
    """Connections over a cap, all on one thread (a selector): each gets ``OVERFLOW_READ_S``
    to send its request line; ``GET /healthz`` is answered, anything else gets 503 ``busy``.
    At most ``OVERFLOW_MAX`` wait at once (the oldest is closed to make room), so neither the
    accept thread nor a worker is ever held by a slow client."""

    def __init__(self, view: AgentView) -> None:
        self._view = view
        self._sel = selectors.DefaultSelector()
        self._new: collections.deque[socket.socket] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._waiting: dict[socket.socket, tuple[float, bytes]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="http-overflow", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        self._new.append(sock.dup())  # the server closes its own handle after this
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(2.0)

    def _drop(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _answer(self, sock: socket.socket, head: bytes) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(OVERFLOW_READ_S)
            sock.sendall(_overflow_reply(self._view, head))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._drop(sock)

    def _run(self) -> None:
        while not self._stop:
            while self._new:
                sock = self._new.popleft()
                if len(self._waiting) >= OVERFLOW_MAX:
                    self._drop(min(self._waiting, key=lambda k: self._waiting[k][0]))
                sock.setblocking(False)
                self._waiting[sock] = (time.monotonic() + OVERFLOW_READ_S, b"")
                self._sel.register(sock, selectors.EVENT_READ)
            now = time.monotonic()
            soonest = min((d for d, _ in self._waiting.values()), default=now + 1.0)
            for key, _ in self._sel.select(max(0.0, soonest - now)):
                obj = key.fileobj
                assert isinstance(obj, socket.socket)
                sock = obj
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        sock.recv(4096)
                    continue
                deadline, head = self._waiting[sock]
                try:
                    chunk = sock.recv(2048 - len(head))
                except OSError:
                    chunk = b""
                if not chunk:
                    self._drop(sock)
                    continue
                head += chunk
                if b"\r\n" in head or len(head) >= 2048:
                    self._answer(sock, head)
                else:
                    self._waiting[sock] = (deadline, head)
            now = time.monotonic()
            for sock, (deadline, head) in list(self._waiting.items()):
                if deadline <= now:
                    self._answer(sock, head)
        for sock in list(self._waiting):
            self._drop(sock)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side where every read gets only the time left until one deadline.

    A per-read timeout restarts with every byte, so a client sending a byte a second holds a
    worker for ever; this one does not (``TimeoutError`` once the deadline passed).
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        timeout = self._sock.gettimeout()
        self._sock.settimeout(left if timeout is None else min(left, timeout))
        try:
            return self._sock.recv_into(b)
        finally:
            self._sock.settimeout(timeout)


def _error_body(reason: str, message: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edge-agent"
    sys_version = ""
    _unread = 0

    def setup(self) -> None:
        super().setup()
        api = self.server.api
        self.connection.settimeout(api.timeout_s)  # writes: slow readers let go
        # reads: the whole request (headers and body) within one deadline
        reader = _DeadlineReader(self.connection, time.monotonic() + api.request_deadline_s)
        self.rfile = io.BufferedReader(reader)

    # -------------------------------------------------------------- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = _JSON,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode())

    def _fail(self, err: _ApiError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == HTTPStatus.UNAUTHORIZED else None
        if err.status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers = {"Allow": _ROUTES.get(self.path.split("?", 1)[0], "GET")}
        self._send(err.status, _error_body(err.reason, str(err)), headers=headers)
        if self._unread:
            self._drain(self._unread)

    def _drain(self, length: int) -> None:
        """Read and discard a refused body (bounded), so closing does not reset the
        connection before the client has read our answer."""
        left = min(length, _DRAIN_MAX)
        with contextlib.suppress(OSError, ValueError):
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` (curl, for big bodies): refuse an oversized body before
        the client sends it."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        limit = self.server.api.max_body_bytes
        if length > limit:
            self._fail(
                _ApiError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "body_too_large",
                    f"request body of {length} bytes is over the limit of {limit}",
                )
            )
            return False
        return super().handle_expect_100()

    def _authorize(self, path: str) -> None:
        token = self.server.api.token
        if token is None or path in {"/", "/healthz"}:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.encode()
        )
        if not ok:
            raise _ApiError(
                HTTPStatus.UNAUTHORIZED, "unauthorized", "a valid bearer token is required"
            )

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _ApiError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send a Content-Length, not chunks"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length needed")
        try:
            length = int(raw)
        except ValueError:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "bad Content-Length") from None
        if length < 0:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "bad Content-Length")
        limit = self.server.api.max_body_bytes
        if length > limit:
            self._unread = length
            raise _ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "body_too_large",
                f"request body of {length} bytes is over the limit of {limit}",
            )
        data = self.rfile.read(length)
        if len(data) != length:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad_request", "request body ended early")
        return data

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise _ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no route {path}")
            if method not in allowed.split(", ") and not (method == "HEAD" and "GET" in allowed):
                raise _ApiError(
                    HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{path} takes {allowed}"
                )
            self._authorize(path)
            if path == "/healthz":
                self._healthz()
            elif path == "/":
                from agent.observe.devicepage import page  # built on first use (RSS)

                self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            elif path == "/metrics":
                with self.server.work_slot():
                    text = self.server.api.view.metrics_text()
                self._send(HTTPStatus.OK, text.encode(), PROMETHEUS_CONTENT_TYPE)
            elif path == "/status":
                with self.server.work_slot():
                    obj = self.server.api.view.status()
                self._json(HTTPStatus.OK, obj)
            elif path == "/drift":
                with self.server.work_slot():
                    obj = self.server.api.view.field()
                self._json(HTTPStatus.OK, obj)
            else:
                self._predict()
        except _ApiError as err:
            self._fail(err)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("HTTP %s %s failed", method, path)
            self._fail(
                _ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error")
            )

    # -------------------------------------------------------------- routes

    def _healthz(self) -> None:
        h = self.server.api.view.health()
        ok = bool(h.get("live")) and bool(h.get("ready"))
        self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, h)

    def _predict(self) -> None:
        view = self.server.api.view
        data = self._body()
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _ApiError(
                HTTPStatus.BAD_REQUEST, "bad_json", f"body is not JSON: {exc}"
            ) from None
        if not isinstance(obj, dict) or "samples" not in obj:
            raise _ApiError(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                'expected a JSON object {"samples": [[...], ...], "stream": "name"}',
            )
        unknown = sorted(set(obj) - {"samples", "stream"})
        if unknown:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad_request", f"unknown field(s) {unknown}")
        stream = obj.get("stream", "http")
        if not isinstance(stream, str) or not 0 < len(stream) <= MAX_STREAM_NAME:
            raise _ApiError(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                f"stream must be a string of 1-{MAX_STREAM_NAME} characters",
            )
        samples = obj["samples"]
        if not isinstance(samples, list):
            raise _ApiError(
                HTTPStatus.BAD_REQUEST, "wrong_shape", "samples must be a list of samples"
            )
        if not view.health().get("ready"):
            raise _ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "not_ready", "the agent is not ready")
        try:
            with self.server.work_slot():
                result = view.predict(samples, stream)
        except SampleError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, exc.reason, exc.detail) from None
        except ShapeMismatch as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "wrong_shape", str(exc)) from None
        except InferenceError as exc:
            raise _ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.reason, exc.detail) from None
        except EdgeAgentError as exc:
            raise _ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "not_ready", str(exc)) from None
        self._json(HTTPStatus.OK, result)

    # -------------------------------------------------------------- methods

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")


_ROUTES = {
    "/": "GET",
    "/healthz": "GET",
    "/metrics": "GET",
    "/status": "GET",
    "/drift": "GET",
    "/v1/predict": "POST",
}


class HttpApi:
    """The server; ``start`` binds and serves on a thread, ``stop`` closes it."""

    def __init__(
        self,
        settings: HttpSection,
        view: AgentView,
        *,
        token: str | None = None,
        max_connections: int = 8,
        max_per_client: int | None = None,
        timeout_s: float = 10.0,
        request_deadline_s: float | None = None,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.view = view
        self.token = token
        self.max_body_bytes = settings.max_body_bytes
        self.max_connections = max_connections
        self.max_per_client = max_per_client or max_connections
        self.timeout_s = timeout_s
        self.request_deadline_s = request_deadline_s or timeout_s
        self.poll_interval_s = poll_interval_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._overflow: _Overflow | None = None

    @property
    def overflow(self) -> _Overflow:
        if self._overflow is None:
            self._overflow = _Overflow(self.view)
        return self._overflow

    @property
    def port(self) -> int:
        """The bound port (the real one when configured with port 0)."""
        if self._server is None:
            raise RuntimeError("the HTTP API is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve; ``ConfigError`` naming http.host/port when the address is unusable."""
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server(self, (host, port), family)
        except OSError as exc:
            raise ConfigError(
                [("http.port", f"cannot listen on {host}:{port}: {exc.strerror or exc}")]
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.poll_interval_s},
            name="http-api",
            daemon=True,
        )
        self._thread.start()
        auth = "token required" if self.token else "no token"
        log.info("HTTP API on %s (%s)", self.url, auth)

    def stop(self, timeout: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._overflow is not None:
            self._overflow.close()
            self._overflow = None
