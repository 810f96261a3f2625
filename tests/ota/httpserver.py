"""A real HTTP server on 127.0.0.1 for download tests, with the faults a device meets.

``FileServer`` serves a directory (an artifact store) and extra routes, each with a mode:

    normal        honours Range (206 + Content-Range), sends Content-Length
    ignore_range  always 200 with the whole body
    cut_once      the first request announces the full length, sends half and hangs up;
                  later requests are served normally (so a resume must use Range)
    more          sends the body plus 4 KiB more, Content-Length included
    more_nolength sends the body plus 4 KiB more without Content-Length, then closes
    truncated     the file is only the first half of the body (Range honoured on that)
    slow          sends 1 KiB every ``delay_s`` seconds
    flaky         answers 503 to the first ``failures`` requests, then normally
    missing       404

Every request is logged as ``(path, Range header or None)`` in ``requests``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Route:
    data: bytes
    mode: str = "normal"
    delay_s: float = 0.05
    failures: int = 2
    served: int = 0


class FileServer:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, mode: str = "normal", **kw: Any) -> str:
        self.routes["/" + path.lstrip("/")] = Route(data, mode, **kw)
        return self.url(path)

    def ranges(self, path: str) -> list[str | None]:
        with self._lock:
            return [r for p, r in self.requests if p == "/" + path.lstrip("/")]

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _lookup(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is not None or self.root is None:
            return route
        f = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() in f.parents and f.is_file():
            return Route(f.read_bytes())
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append((h.path, rng))
        route = self._lookup(h.path)
        if route is None or route.mode == "missing":
            h.send_error(404)
            return
        route.served += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._respond(h, route, rng)

    def _respond(self, h: BaseHTTPRequestHandler, route: Route, rng: str | None) -> None:
        data, mode = route.data, route.mode
        if mode == "flaky" and route.served <= route.failures:
            h.send_error(503)
            return
        if mode == "truncated":
            data = data[: len(data) // 2]
        if mode in ("more", "more_nolength"):
            h.send_response(200)
            body = data + b"\x00" * 4096
            if mode == "more":
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        start = 0
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if m and mode not in ("ignore_range",):
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if mode == "cut_once" and route.served == 1:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if mode == "slow":
            for i in range(0, len(body), 1024):
                h.wfile.write(body[i : i + 1024])
                h.wfile.flush()
                time.sleep(route.delay_s)  # the fault under test: a slow sender
            return
        h.wfile.write(body)
