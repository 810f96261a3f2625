"""A clock we cannot trust: a lower bound on time, and whether the system clock is synchronised.

A Raspberry Pi has no real-time clock: it boots with the time it shut down at (or 1970) until
NTP answers. Expiry checks on a wrong clock either refuse good metadata (clock ahead) or let a
freeze through (clock behind: expired metadata looks fresh). Two defences:

- ``TimeFloor``: a durable lower bound on the time (``<state_dir>/clock.json``), raised to the
  signing time of every trusted TUF timestamp seen (and never lowered). While the system clock
  is below it, the clock is known to be wrong.
- ``synchronised()``: systemd-timesyncd's view where it runs (``/run/systemd/timesync/
  synchronized`` exists once it has synchronised since boot); None where there is no timesyncd
  (a container, another NTP client: nothing is known).

``ClockStatus.ok()`` says whether updates may go on (``agent.ota`` waits otherwise and says
why); ``ClockStatus.synced`` is cached for a few seconds so the publisher can mark predictions
made before the clock was synchronised (``"clock_synced": false`` in their payload).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from agent.durable import atomic_write

log = logging.getLogger(__name__)

TIMESYNC_DIR = Path("/run/systemd/timesync")
RECHECK_S = 5.0


def synchronised(timesync_dir: Path = TIMESYNC_DIR) -> bool | None:
    """True/False from systemd-timesyncd; None when it is not running here."""
    if not timesync_dir.is_dir():
        return None
    return (timesync_dir / "synchronized").exists()


class TimeFloor:
    """The newest trusted time ever seen, kept on disk (never lowered)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self) -> float:
        try:
            return float(json.loads(self.path.read_bytes())["not_before"])
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("clock floor %s unreadable (%s): treated as 0", self.path, exc)
            return 0.0

    def raise_to(self, t: float) -> None:
        if t <= self.get():
            return
        try:
            atomic_write(self.path, json.dumps({"not_before": t}).encode())
        except OSError as exc:
            log.error("cannot raise the clock floor in %s: %s", self.path, exc)


class ClockStatus:
    """The lower bound and the sync state, with a cached ``synced`` for the hot path."""

    def __init__(self, state_dir: Path, timesync_dir: Path = TIMESYNC_DIR) -> None:
        self.floor = TimeFloor(state_dir / "clock.json")
        self._timesync = timesync_dir
        self._lock = threading.Lock()
        self._synced: bool | None = None
        self._checked = -RECHECK_S

    @property
    def synced(self) -> bool | None:
        """timesyncd's state, re-read at most every ``RECHECK_S`` (cheap on the hot path)."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            with self._lock:
                self._synced = synchronised(self._timesync)
                self._checked = now
        return self._synced

    def ok(self, now: float | None = None) -> tuple[bool, str]:
        """Whether the clock can be used for expiry checks, and why not."""
        t = time.time() if now is None else now
        bound = self.floor.get()
        if t < bound:
            return False, (
                f"the clock says {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))}, before "
                f"the newest trusted time {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(bound))}"
            )
        if synchronised(self._timesync) is False:
            return False, "systemd-timesyncd has not synchronised the clock since boot"
        return True, ""
