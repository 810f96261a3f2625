"""The dashboard's ASGI app (Starlette): pages, live updates, actions.

Stable URLs, one per view (filters and paging are query parameters, so a URL can be shared):

    GET  /devices?group=&version=&state=&q=&page=&per_page=   devices, filtered and paged
    GET  /devices/<id>                                        one device
    GET  /rollouts, /rollouts/<n>                             rollouts started here
    POST /rollouts                                            start one (the CLI's options)
    POST /rollouts/<n>/abort                                  abort it (restores the channel)
    POST /promote                                             ``edge-fleet promote``
    GET  /releases, /releases/<channel>/<model>               what channels offer, with reports
    GET  <any page>/events (same query)                       server-sent events: the page's
                                                              live region, re-rendered on change
    GET  /api/devices (same query)                            the devices page as JSON
    GET  /healthz                                             200 (no credentials needed)

Every page is rendered on the server (Jinja2 templates, package data); a page's live region
(``data-live``) is what its event stream sends again whenever the fleet changes (at most
every ``UPDATE_INTERVAL_S``), and twenty lines of script without a framework swap it in.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import anyio.to_thread
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp

from agent.config import check_topic_id
from agent.errors import EdgeAgentError
from agent.fleet.view import summary
from agent.fleet.web.auth import AuthMiddleware, Credentials
from agent.fleet.web.rollouts import RolloutRequest, Rollouts
from agent.fleet.web.state import STATES, Dashboard, device_state
from agent.fleet.web.svg import line_chart
from agent.release.report import REPORT_CSS, manifest_report

UPDATE_INTERVAL_S = 0.5
"""Live regions are sent at most this often (a fleet of thousands changes all the time)."""
KEEPALIVE_S = 15.0
PER_PAGE = 50


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("agent.fleet.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals |= {
        "age": _age,
        "when": _when,
        "state_of": device_state,
        "STATES": STATES,
    }
    return env


def _ours(html: str) -> Markup:
    """HTML this package or ``agent.release.report`` rendered (they escape every value)."""
    return Markup(html)  # noqa: S704


def _static(name: str) -> bytes:
    return resources.files("agent.fleet.web").joinpath("static", name).read_bytes()


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


MAX_FORM_BYTES = 64 * 1024


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the pages' forms), first value per key."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise EdgeAgentError("form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _float(form: dict[str, str], key: str, default: float) -> float:
    raw = form.get(key)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise EdgeAgentError(f"{key} must be a number, not {raw!r}") from None


class DashboardApp:
    """Routes over a ``Dashboard`` and its ``Rollouts``."""

    def __init__(self, dash: Dashboard, rollouts: Rollouts | None) -> None:
        self.dash = dash
        self.rollouts = rollouts
        self.env = _environment()
        self.css = (_static("style.css").decode() + REPORT_CSS).encode()
        self.js = _static("live.js")

    # ---------------------------------------------------------------- plumbing

    def _render(self, name: str, **ctx: Any) -> str:
        ctx.setdefault("connected", self.dash.connected())
        return self.env.get_template(name).render(now=time.time(), **ctx)

    def _page(self, name: str, live: str, events: str, title: str, **ctx: Any) -> HTMLResponse:
        region = self._render(live, **ctx)
        body = self._render(name, title=title, live=_ours(region), events=events, **ctx)
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    def _now(self, render: Callable[[], str]) -> Callable[[], tuple[str, int]]:
        """A render of state that is read live (not from the snapshot): the count before it."""

        def counted() -> tuple[str, int]:
            seen = self.dash.changes
            return render(), seen

        return counted

    def _stream(self, request: Request, render: Callable[[], tuple[str, int]]) -> StreamingResponse:
        """Server-sent events: ``render()`` (the live region and the change count it shows)
        again after every change."""
        dash = self.dash

        async def events() -> AsyncIterator[str]:
            last: str | None = None
            yield "retry: 2000\n\n"
            while True:
                html, seen = await anyio.to_thread.run_sync(render)
                if html != last:
                    last = html
                    data = "\n".join(f"data: {line}" for line in html.split("\n"))
                    yield f"event: fragment\n{data}\n\n"
                else:
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                await anyio.to_thread.run_sync(
                    dash.wait_change, seen, KEEPALIVE_S, abandon_on_cancel=True
                )
                await anyio.sleep(UPDATE_INTERVAL_S)  # coalesce a burst of changes

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ---------------------------------------------------------------- devices

    def _devices_ctx(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        filters = {
            "group": q.get("group") or "",
            "version": q.get("version") or "",
            "state": q.get("state") or "",
            "q": q.get("q") or "",
        }
        per_page = _int(q.get("per_page"), PER_PAGE)
        devices, changes = self.dash.snapshot()
        page = self.dash.query(
            devices=devices,
            group=filters["group"] or None,
            version=filters["version"] or None,
            state=filters["state"] or None,
            search=filters["q"] or None,
            page=_int(q.get("page"), 1),
            per_page=per_page,
        )
        base = {k: v for k, v in filters.items() if v}
        if per_page != PER_PAGE:
            base["per_page"] = str(per_page)

        def page_url(n: int) -> str:
            return "/devices?" + urlencode({**base, "page": n})

        groups, versions = self.dash.facets(devices)
        return {
            "page": page,
            "filters": filters,
            "groups": groups,
            "versions": versions,
            "page_url": page_url,
            "summary": summary(devices),
            "changes": changes,
        }

    async def devices(self, request: Request) -> Response:
        ctx = await anyio.to_thread.run_sync(self._devices_ctx, request)
        events = "/devices/events?" + str(request.query_params)
        return self._page("devices.html", "devices_live.html", events, "devices", **ctx)

    async def devices_events(self, request: Request) -> Response:
        def render() -> tuple[str, int]:
            ctx = self._devices_ctx(request)
            return self._render("devices_live.html", **ctx), ctx["changes"]

        return self._stream(request, render)

    async def api_devices(self, request: Request) -> Response:
        ctx = await anyio.to_thread.run_sync(self._devices_ctx, request)
        page = ctx["page"]
        now = time.time()
        return JSONResponse(
            {
                "total": page.total,
                "page": page.page,
                "pages": page.pages,
                "devices": [d.to_json(now) | {"state": device_state(d)} for d in page.devices],
            }
        )

    # ---------------------------------------------------------------- one device

    def _device_id(self, request: Request) -> str | None:
        """The path's device id; None when it is not a valid topic part (never subscribed)."""
        device = str(request.path_params["device"])
        try:
            check_topic_id(device, "device")
        except ValueError:
            return None
        return device

    def _device_ctx(self, device: str) -> dict[str, Any]:
        d, changes = self.dash.device(device)
        now = time.time()
        hist = self.dash.history(device)
        start = now - 3600.0
        rate = line_chart(
            "predictions per second",
            [("rate", [(p.ts, p.rate) for p in hist])],
            start=start,
            end=now,
            unit="/s",
        )
        latency = line_chart(
            "latency p50",
            [
                ("invoke", [(p.ts, p.invoke_p50_ms) for p in hist]),
                ("pipeline", [(p.ts, p.pipeline_p50_ms) for p in hist]),
            ],
            start=start,
            end=now,
            unit="ms",
        )
        predictions = list(reversed(self.dash.predictions(device)))
        return {
            "device_id": device,
            "d": d,
            "changes": changes,
            "rate_chart": _ours(rate),
            "latency_chart": _ours(latency),
            "predictions": predictions,
            "fmt_outputs": lambda o: json.dumps(o, separators=(", ", ": "))[:200],
            "ota_history": list(reversed(self.dash.ota_history(device))),
        }

    async def device(self, request: Request) -> Response:
        device = self._device_id(request)
        if device is None:
            return PlainTextResponse("not a device id\n", status_code=404)
        self.dash.watch_predictions(device)
        ctx = await anyio.to_thread.run_sync(self._device_ctx, device)
        if ctx["d"] is None:
            return PlainTextResponse(f"no device {device} seen\n", status_code=404)
        return self._page(
            "device.html", "device_live.html", f"/devices/{device}/events", device, **ctx
        )

    async def device_events(self, request: Request) -> Response:
        device = self._device_id(request)
        if device is None:
            return PlainTextResponse("not a device id\n", status_code=404)
        self.dash.watch_predictions(device)

        def render() -> tuple[str, int]:
            ctx = self._device_ctx(device)
            return self._render("device_live.html", **ctx), ctx["changes"]

        return self._stream(request, render)

    # ---------------------------------------------------------------- rollouts

    def _rollouts_ctx(self) -> dict[str, Any]:
        jobs = self.rollouts.jobs() if self.rollouts else []
        return {
            "jobs": jobs,
            "releases": self.dash.releases(),
            "enabled": self.rollouts is not None,
        }

    async def rollouts_page(self, request: Request) -> Response:
        ctx = self._rollouts_ctx()
        ctx["message"] = request.query_params.get("message", "")
        return self._page(
            "rollouts.html", "rollouts_live.html", "/rollouts/events", "rollouts", **ctx
        )

    async def rollouts_events(self, request: Request) -> Response:
        return self._stream(
            request, self._now(lambda: self._render("rollouts_live.html", **self._rollouts_ctx()))
        )

    async def start_rollout(self, request: Request) -> Response:
        if self.rollouts is None:
            return PlainTextResponse("rollouts are not enabled\n", status_code=404)
        try:
            form = await _form(request)
            package = str(form.get("package") or "").strip()
            groups = [g.strip() for g in str(form.get("groups") or "").split(",") if g.strip()]
            req = RolloutRequest(
                channel=str(form.get("channel") or "").strip(),
                model=str(form.get("model") or "").strip() or None,
                from_channel=str(form.get("from_channel") or "").strip() or None,
                package=Path(package) if package else None,
                base_url=str(form.get("base_url") or "").strip() or None,
                groups=tuple(groups),
                percent=_float(form, "percent", 100.0),
                max_failure_fraction=_float(form, "max_failure_fraction", 0.2),
                timeout_s=_float(form, "timeout", 600.0),
                discover_s=_float(form, "discover", 5.0),
                force=form.get("force") == "on",
            )
            if not req.channel:
                raise EdgeAgentError("a channel to announce on is needed")
        except EdgeAgentError as exc:
            return RedirectResponse("/rollouts?" + urlencode({"message": str(exc)}), 303)
        job = self.rollouts.start(req)
        return RedirectResponse(f"/rollouts/{job.id}", 303)

    def _rollout_ctx(self, job_id: int) -> dict[str, Any]:
        job = self.rollouts.get(job_id) if self.rollouts else None
        return {"job": job}

    async def rollout(self, request: Request) -> Response:
        job_id = _int(str(request.path_params["job"]), 0)
        ctx = self._rollout_ctx(job_id)
        if ctx["job"] is None:
            return PlainTextResponse("no such rollout\n", status_code=404)
        return self._page(
            "rollout.html",
            "rollout_live.html",
            f"/rollouts/{job_id}/events",
            f"rollout {job_id}",
            **ctx,
        )

    async def rollout_events(self, request: Request) -> Response:
        job_id = _int(str(request.path_params["job"]), 0)
        return self._stream(
            request,
            self._now(lambda: self._render("rollout_live.html", **self._rollout_ctx(job_id))),
        )

    async def abort_rollout(self, request: Request) -> Response:
        job_id = _int(str(request.path_params["job"]), 0)
        if self.rollouts is None or self.rollouts.abort(job_id) is None:
            return PlainTextResponse("no such rollout\n", status_code=404)
        return RedirectResponse(f"/rollouts/{job_id}", 303)

    async def promote(self, request: Request) -> Response:
        if self.rollouts is None:
            return PlainTextResponse("rollouts are not enabled\n", status_code=404)
        try:
            form = await _form(request)
        except EdgeAgentError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=413)
        model = str(form.get("model") or "").strip()
        source = str(form.get("source") or "canary").strip()
        dest = str(form.get("dest") or "stable").strip()
        version = str(form.get("version") or "").strip() or None
        rollouts = self.rollouts
        try:
            got = await anyio.to_thread.run_sync(
                lambda: rollouts.promote(model, source, dest, version, form.get("force") == "on")
            )
        except EdgeAgentError as exc:
            return RedirectResponse("/rollouts?" + urlencode({"message": f"promote: {exc}"}), 303)
        message = f"promoted {model} {got}: {source} -> {dest}"
        return RedirectResponse("/rollouts?" + urlencode({"message": message}), 303)

    # ---------------------------------------------------------------- releases

    async def releases(self, request: Request) -> Response:
        ctx = {"releases": self.dash.releases()}
        return self._page(
            "releases.html", "releases_live.html", "/releases/events", "releases", **ctx
        )

    async def releases_events(self, request: Request) -> Response:
        return self._stream(
            request,
            self._now(lambda: self._render("releases_live.html", releases=self.dash.releases())),
        )

    def _release_ctx(self, channel: str, model: str) -> dict[str, Any]:
        rel = self.dash.release(channel, model)
        report = None
        if rel is not None and rel.manifest is not None:
            report = _ours(manifest_report(rel.manifest))
        return {"rel": rel, "report": report, "channel": channel, "model": model}

    async def release(self, request: Request) -> Response:
        channel, model = str(request.path_params["channel"]), str(request.path_params["model"])
        ctx = self._release_ctx(channel, model)
        if ctx["rel"] is None:
            return PlainTextResponse(f"{channel} offers nothing for {model}\n", status_code=404)
        return self._page(
            "release.html",
            "release_live.html",
            f"/releases/{channel}/{model}/events",
            f"{model} on {channel}",
            **ctx,
        )

    async def release_events(self, request: Request) -> Response:
        channel, model = str(request.path_params["channel"]), str(request.path_params["model"])
        return self._stream(
            request,
            self._now(
                lambda: self._render("release_live.html", **self._release_ctx(channel, model))
            ),
        )

    # ---------------------------------------------------------------- misc

    async def index(self, request: Request) -> Response:
        return RedirectResponse("/devices", 307)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "broker_connected": self.dash.connected()})

    async def style(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css")

    async def script(self, request: Request) -> Response:
        return Response(self.js, media_type="text/javascript")

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index),
            Route("/healthz", self.healthz),
            Route("/static/style.css", self.style),
            Route("/static/live.js", self.script),
            Route("/devices", self.devices),
            Route("/devices/events", self.devices_events),
            Route("/api/devices", self.api_devices),
            Route("/devices/{device}", self.device),
            Route("/devices/{device}/events", self.device_events),
            Route("/rollouts", self.rollouts_page),
            Route("/rollouts", self.start_rollout, methods=["POST"]),
            Route("/rollouts/events", self.rollouts_events),
            Route("/rollouts/{job:int}", self.rollout),
            Route("/rollouts/{job:int}/events", self.rollout_events),
            Route("/rollouts/{job:int}/abort", self.abort_rollout, methods=["POST"]),
            Route("/promote", self.promote, methods=["POST"]),
            Route("/releases", self.releases),
            Route("/releases/events", self.releases_events),
            Route("/releases/{channel}/{model}", self.release),
            Route("/releases/{channel}/{model}/events", self.release_events),
        ]


def create_app(
    dash: Dashboard, rollouts: Rollouts | None, creds: Credentials | None = None
) -> ASGIApp:
    """The dashboard as an ASGI app, behind the credentials check (none: loopback use)."""
    app = DashboardApp(dash, rollouts)
    return AuthMiddleware(Starlette(routes=app.routes()), creds or Credentials())
