"""systemd integration: sd_notify messages and a watchdog that pings only while we progress.

No dependency: the notify protocol is one datagram per message on the ``AF_UNIX`` socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), newline-separated
``KEY=value`` lines. Everything here does nothing when ``NOTIFY_SOCKET`` is unset, so the agent
runs the same from a shell, in a container or under systemd.

- ``Notifier`` sends ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1`` and friends.
  A failed send is logged and swallowed: telling systemd about our state must never be what
  stops the agent.
- ``watchdog_interval()`` reads ``WatchdogSec=`` back from ``$WATCHDOG_USEC``/``$WATCHDOG_PID``.
- ``WatchdogPinger`` is a thread that pings every half interval, but only while the supplied
  ``is_healthy()`` says the pipeline is making progress. A hung inference or a dead MQTT thread
  makes ``is_healthy()`` false (or makes it hang): the pings stop and systemd restarts us.
- ``Heartbeat`` is the progress signal a loop bumps on every iteration.
- the command source (``agent.ingest.sources.command.child_environ``) strips those variables
  from the environment of the sensor processes it starts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0
"""Longest a send may block when systemd's receive queue is full."""


def _socket_address(raw: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address, or None when we cannot use it."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying systemd", raw)
    return None


class Notifier:
    """Sends sd_notify messages to one socket; every method is a no-op when disabled.

    Methods return True when the message was handed to the socket. A failed send is logged, never
    raised; only a malformed assignment (a programming error) raises ``ValueError``.
    Thread-safe: each message is a single ``sendto`` on a datagram socket.
    """

    def __init__(self, address: str | None) -> None:
        """``address`` as ``$NOTIFY_SOCKET`` spells it; None (or empty) disables notifying."""
        self.address = address or None
        self._addr = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._failed = False
        if self._addr is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("cannot open a socket for sd_notify (%s): not notifying systemd", exc)
                return
            self._sock.settimeout(SEND_TIMEOUT_S)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (disabled when it is unset or empty)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one message."""
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"sd_notify assignment must be one KEY=value line: {item!r}")
        sock = self._sock
        if sock is None or self._addr is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            sock.sendto(payload, self._addr)
        except OSError as exc:
            # Logged loudly once, then quietly: systemd may simply be gone during shutdown.
            level = logging.DEBUG if self._failed else logging.WARNING
            log.log(level, "sd_notify to %s failed (%s): %s", self.address, payload[:40], exc)
            self._failed = True
            return False
        if self._failed:
            log.info("sd_notify to %s works again", self.address)
            self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: the model is loaded and the pipeline runs."""
        extra = () if status is None else (_status_line(status),)
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        """A one-line summary shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """Configuration reload begins; send ``ready()`` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown begins."""
        extra = () if status is None else (_status_line(status),)
        return self.notify("STOPPING=1", *extra)

    def watchdog(self) -> bool:
        """Keep-alive ping: we are making progress."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """Ask systemd to act now as if the watchdog had expired (restart us)."""
        return self.notify("WATCHDOG=trigger")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more to finish starting or stopping (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.split())


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """systemd's watchdog timeout (``WatchdogSec=``) in seconds, or None when it is off.

    None also when ``$WATCHDOG_PID`` names another process (the variable was inherited).
    Ping at half this interval, as sd_watchdog_enabled(3) advises.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID=%r", owner)
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", raw)
        return None
    return usec / 1_000_000 if usec > 0 else None


class Heartbeat:
    """When a loop last made progress. ``beat()`` from the loop, ``fresh()`` from the watchdog.

    Starts as if it had just beaten, so a pipeline gets ``max_age_s`` to make its first round.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()  # a float store is atomic: no lock needed

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def fresh(self, max_age_s: float) -> bool:
        return self.age() <= max_age_s


class WatchdogPinger:
    """A thread that sends ``WATCHDOG=1`` only while ``is_healthy()`` returns True.

    ``interval_s`` is the time between checks; by default half of ``watchdog_interval()``.
    ``is_healthy`` runs on this thread; if it raises, that counts as unhealthy, and if it
    hangs the pings stop, which is what we want. ``status`` (optional) gives the one-line
    ``STATUS=`` summary, re-sent on each round when it changed; with no watchdog configured
    the thread still runs every ``status_interval_s`` to keep the status current.

    Without ``$NOTIFY_SOCKET``, or with neither a watchdog nor a status, ``start()`` starts
    nothing and returns False.
    """

    def __init__(
        self,
        notifier: Notifier,
        is_healthy: Callable[[], bool],
        *,
        interval_s: float | None = None,
        status: Callable[[], str] | None = None,
        status_interval_s: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if interval_s is None:
            timeout = watchdog_interval(environ)
            interval_s = None if timeout is None else timeout / 2
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._notifier = notifier
        self._is_healthy = is_healthy
        self._status = status
        self.watchdog_enabled = interval_s is not None
        self.period_s = interval_s if interval_s is not None else status_interval_s
        self.pings = 0
        self.withheld = 0
        self._stalled = False
        self._last_status: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start the thread; False (and no thread) when there is nothing to do."""
        if not self._notifier.enabled or not (self.watchdog_enabled or self._status):
            log.debug("systemd watchdog pinger not started (nothing to notify)")
            return False
        if self._thread is not None:
            return True
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
        self._thread.start()
        log.info(
            "systemd watchdog pinger: %s every %.2fs",
            "health-gated pings" if self.watchdog_enabled else "status only",
            self.period_s,
        )
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def stalled(self) -> bool:
        """True while pings are being withheld."""
        return self._stalled

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.period_s):
                return

    def tick(self) -> None:
        """One round: check health, ping if healthy, refresh the status. Runs on the thread."""
        if self.watchdog_enabled:
            if self._check():
                if self._stalled:
                    log.warning("pipeline progressing again: watchdog pings resumed")
                    self._stalled = False
                if self._notifier.watchdog():
                    self.pings += 1
            else:
                self.withheld += 1
                if not self._stalled:
                    log.error(
                        "pipeline not progressing: withholding watchdog pings, systemd will "
                        "restart the service when WatchdogSec runs out"
                    )
                    self._stalled = True
        if self._status is not None:
            self._send_status(self._status)

    def _check(self) -> bool:
        try:
            return bool(self._is_healthy())
        except Exception:
            if not self._stalled:
                log.exception("health check raised: treating the pipeline as stalled")
            return False

    def _send_status(self, status: Callable[[], str]) -> None:
        try:
            text = status()
        except Exception:
            log.exception("status summary raised")
            return
        if text != self._last_status and self._notifier.status(text):
            self._last_status = text
