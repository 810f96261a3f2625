"""The local HTTP API: health, metrics, status and on-demand inference for programs on the device.

Off by default (``[http] enabled``), bound to 127.0.0.1 unless configured otherwise. The standard
library's ``ThreadingHTTPServer``: no web framework on a Pi for four routes.

    GET  /             the device's status page (HTML, agent/observe/devicepage.py; reads /status)
    GET  /healthz      200 when live and ready, 503 otherwise (JSON body says which check failed)
    GET  /metrics      Prometheus text (exposition format 0.0.4)
    GET  /status       JSON: device, model, broker connection, queue, the metrics snapshot
    POST /v1/predict   {"samples": [[c0, c1, ...], ...], "stream": "name"} -> one prediction

Limits, because anything on the device can connect: request bodies above
``http.max_body_bytes`` are refused before they are read (413); a body needs a Content-Length
(411); at most ``max_connections`` requests do work at once, the rest get 503 ``busy``
(``/healthz`` always answers); slow clients time out after ``timeout_s``. Every response closes
its connection.

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

import contextlib
import hmac
import json
import logging
import os
import socket
import threading
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
        super().__init__(address, _Handler)

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
        if not self._conns.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._conns.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._conns.release()


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
        self.connection.settimeout(self.server.api.timeout_s)  # slow clients let go

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
        timeout_s: float = 10.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.view = view
        self.token = token
        self.max_body_bytes = settings.max_body_bytes
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

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
