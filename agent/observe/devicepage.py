"""The device's own status page (``GET /`` on the local HTTP API).

One static HTML document (``devicepage.html``, package data) with a few lines of plain
JavaScript (no framework, nothing to install): it asks ``/status`` every ``REFRESH_S``
seconds and fills in the device, model and version, health, broker connection, OTA
channels, queue, the metrics and the last predictions. The page itself holds no data, so it
is served without a token; when the API wants one, ``/status`` answers 401 and the page asks
for the token (kept in the tab's sessionStorage, sent as ``Authorization: Bearer``).

The bytes are read once, on the first request (``page``): an agent that never serves the
page never reads them, and importing this module is left to the route (start-up and RSS
stay as they were).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

REFRESH_S = 2


@cache
def page() -> bytes:
    """The page's bytes (read on first use, then the same object every time)."""
    html = resources.files("agent.observe").joinpath("devicepage.html").read_text("utf-8")
    return html.replace("REFRESH_MS", str(REFRESH_S * 1000)).encode("utf-8")
