"""Who may see the dashboard: nobody but the local user, unless a secret is configured.

On a loopback address the dashboard needs no credentials (like the agent's HTTP API); on
any other address ``edge-fleet serve`` refuses to start without one of

* a bearer token (``--token-file``): ``Authorization: Bearer <token>``, or once in a browser
  ``/login?token=<token>``, which sets an HttpOnly cookie and redirects;
* basic auth (``--basic-auth-file`` holding ``user:password``): the browser asks.

Secrets are compared in constant time. Every state-changing request (POST) must come from
the dashboard's own pages: a browser's ``Origin`` (or ``Referer``) must name this host, so a
page elsewhere cannot start a rollout with the operator's cookie.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from agent.errors import ConfigError

COOKIE = "edge_fleet_token"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class Credentials:
    """The dashboard's credentials: a bearer token and/or a basic-auth user and password."""

    token: str | None = None
    basic: tuple[str, str] | None = None

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic is not None


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([(what, f"cannot read {path}: {exc.strerror or exc}")]) from None
    if not text:
        raise ConfigError([(what, f"{path} is empty")])
    return text


def load_credentials(
    host: str, token_file: Path | None, basic_auth_file: Path | None
) -> Credentials:
    """The credentials to require; ``ConfigError`` for a non-loopback address without any."""
    token = _read_secret(token_file, "--token-file") if token_file else None
    basic = None
    if basic_auth_file is not None:
        user, sep, password = _read_secret(basic_auth_file, "--basic-auth-file").partition(":")
        if not (sep and user and password):
            raise ConfigError([("--basic-auth-file", "must hold user:password")])
        basic = (user, password)
    creds = Credentials(token, basic)
    if host not in LOOPBACK and not creds.required:
        raise ConfigError(
            [
                (
                    "--listen",
                    f"{host} is not a loopback address: give --token-file or --basic-auth-file",
                )
            ]
        )
    return creds


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class AuthMiddleware:
    """ASGI middleware: 401 without the configured credentials; 403 for cross-site POSTs."""

    def __init__(self, app: ASGIApp, creds: Credentials) -> None:
        self.app = app
        self.creds = creds

    def _authorized(self, headers: dict[str, str]) -> bool:
        if not self.creds.required:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        token, basic = self.creds.token, self.creds.basic
        if token is not None:
            if scheme == "bearer" and _same(value, token):
                return True
            for part in headers.get("cookie", "").split(";"):
                name, _, v = part.strip().partition("=")
                if name == COOKIE and _same(v, token):
                    return True
        if basic is not None and scheme == "basic":
            try:
                user, _, pw = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(user, basic[0]) & _same(pw, basic[1])
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if path == "/login" and self.creds.token is not None:
            given = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
            if _same(given, self.creds.token):
                await _respond(
                    send,
                    303,
                    b"",
                    [
                        (b"location", b"/devices"),
                        (
                            b"set-cookie",
                            f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/".encode(),
                        ),
                    ],
                )
                return
        if path != "/healthz" and not self._authorized(headers):
            challenge = b'Basic realm="edge-fleet"' if self.creds.basic else b"Bearer"
            await _respond(send, 401, b"unauthorized\n", [(b"www-authenticate", challenge)])
            return
        if scope["method"] == "POST" and not _same_origin(headers):
            await _respond(send, 403, b"cross-site request refused\n", [])
            return
        await self.app(scope, receive, send)


def _same_origin(headers: dict[str, str]) -> bool:
    origin = headers.get("origin") or headers.get("referer")
    if not origin:
        return True  # not a browser (curl, scripts): credentials were checked
    return urlsplit(origin).netloc == headers.get("host", "")


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
