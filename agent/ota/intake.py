"""Offers in: retained announcements and dropped-in package files, queued for the updater.

The MQTT network thread and watchdog's thread only call ``announcement``/``file`` here: they
record a job (the latest per topic / per file wins: a newer retained message replaces an
unprocessed older one) and wake the updater. The updater takes jobs with ``next`` and turns
each into an ``Offer`` with ``offer`` on its own thread. A file whose zip does not read yet
and that was modified less than ``SETTLE_S`` ago is looked at again later instead of being
rejected (a copier that closes and reopens); ``done`` deletes a processed file or moves a
refused one to ``incoming/rejected/``.

Only regular files are opened (``open_regular``): a FIFO, device, socket or symlink named
``*.eapkg`` is refused as ``not_a_file`` and set aside without ever being opened, so it cannot
block the updater. Only the manifest and signature are read before the signature is checked;
the model entry is inflated afterwards, capped at the signed size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.errors import UpdateError
from agent.ota.decide import NOT_A_REFUSAL, Offer, offer_from_announcement, offer_from_file
from agent.ota.incoming import IncomingWatcher
from agent.release.package import MAX_MANIFEST_BYTES, MAX_MODEL_BYTES

log = logging.getLogger(__name__)

SETTLE_S = 2.0
MAX_PACKAGE_BYTES = MAX_MODEL_BYTES + MAX_MANIFEST_BYTES + 1024 * 1024


@dataclass(frozen=True)
class Job:
    """One offer to handle: from a channel (payload) or the drop-in folder (path)."""

    key: str
    channel: str | None = None
    payload: bytes = b""
    path: Path | None = None
    not_before: float = 0.0
    tentative: bool = False
    """A file that appeared without being closed by a writer here (moved in from elsewhere,
    or just created): looked at once it has not changed for ``SETTLE_S``; if it does not read
    as a package then, it is left for its writer's close instead of being rejected."""

    @property
    def source(self) -> str:
        return f"channel:{self.channel}" if self.path is None else f"incoming:{self.path.name}"


def _young(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime < SETTLE_S
    except OSError:
        return False


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFLNK: "symlink",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
}


def _not_a_file(path: Path, mode: int) -> UpdateError:
    kind = _KINDS.get(stat.S_IFMT(mode), "special file")
    return UpdateError("not_a_file", f"{path.name} is a {kind}: only regular files are read")


def open_regular(path: Path) -> BinaryIO:
    """Open a dropped-in file for reading only if it is a regular file (UpdateError
    ``not_a_file`` / ``too_large``, OSError).

    ``lstat`` first, so a FIFO, device or symlink is never opened at all; then the open itself
    cannot block or follow a link swapped in meanwhile (``O_NONBLOCK | O_NOFOLLOW``), and the
    opened file is checked again with ``fstat``.
    """
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(path, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(path, st.st_mode)
        if st.st_size > MAX_PACKAGE_BYTES:
            raise UpdateError(
                "too_large", f"{path.name} is {st.st_size} bytes, over {MAX_PACKAGE_BYTES}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Intake:
    """The updater's inbox (thread-safe) and the drop-in folder's housekeeping."""

    def __init__(self, channels: dict[str, str], model: str, incoming: Path) -> None:
        self._channels = channels
        self._model = model
        self._rejected = incoming / "rejected"
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._latest: dict[str, Job] = {}  # the last announcement seen per channel topic
        self.wake = threading.Event()
        self.watcher = IncomingWatcher(incoming, self.file)

    @property
    def topics(self) -> list[str]:
        return list(self._channels)

    # ---------------------------------------------------------------- other threads

    def announcement(self, topic: str, payload: bytes) -> None:
        """MQTT handler: never blocks."""
        channel = self._channels.get(topic)
        if channel is None:
            return
        if not payload:  # an empty retained message clears the channel
            with self._lock:
                self._latest.pop(topic, None)
            return
        job = Job(key=topic, channel=channel, payload=bytes(payload))
        with self._lock:
            self._latest[topic] = job
        self._put(job)

    def retry(self) -> int:
        """Queue the latest announcement of every channel again (the ``install`` command:
        a download that failed is tried again; everything is decided afresh). Returns how
        many were queued."""
        with self._lock:
            jobs = list(self._latest.values())
        for job in jobs:
            self._put(job)
        return len(jobs)

    def file(self, path: Path, tentative: bool = False) -> None:
        not_before = time.monotonic() + SETTLE_S if tentative else 0.0
        self._put(Job(key=f"file:{path}", path=path, not_before=not_before, tentative=tentative))

    def hint(self, channel: str) -> None:
        """Ask for a check of ``channel`` (TUF: a timer's refresh)."""
        for topic, c in self._channels.items():
            if c == channel:
                self._put(Job(key=topic, channel=channel))

    def later(self, job: Job, delay_s: float) -> None:
        """Requeue ``job`` after ``delay_s`` (unless a newer one for its key arrives)."""
        self._put(dataclasses.replace(job, not_before=time.monotonic() + delay_s))

    def _put(self, job: Job) -> None:
        with self._lock:
            old = self._jobs.pop(job.key, None)
            if old is not None and job.tentative and not old.tentative:
                job = old  # a writer's close already said the file is complete
            self._jobs[job.key] = job
        self.wake.set()

    # ---------------------------------------------------------------- the updater's thread

    def next(self) -> tuple[Job | None, float]:
        """The oldest due job, or None and how long to wait for one."""
        now = time.monotonic()
        with self._lock:
            for key, job in list(self._jobs.items()):
                if job.not_before <= now:
                    del self._jobs[key]
                    if job.tentative and job.path is not None and _young(job.path):
                        self._jobs[key] = dataclasses.replace(job, not_before=now + SETTLE_S)
                        continue
                    return job, 0.0
            soonest = min((j.not_before for j in self._jobs.values()), default=now + 1.0)
        return None, min(1.0, max(0.01, soonest - now))

    def offer(self, job: Job) -> Offer:
        """Parse an announcement, or read a package file once (UpdateError, OSError)."""
        if job.path is None:
            assert job.channel is not None
            return offer_from_announcement(job.payload, job.channel, self._model)
        f = open_regular(job.path)
        try:
            return offer_from_file(job.path.name, f)
        except BaseException:
            f.close()
            raise

    def settle(self, job: Job) -> bool:
        """Look at a recently modified, unreadable file again later; True if requeued."""
        if job.path is None:
            return False
        try:
            young = time.time() - job.path.stat().st_mtime < SETTLE_S
        except OSError:
            return False
        if young:
            log.info("%s looks incomplete; looking again in %gs", job.path.name, SETTLE_S)
            self._put(dataclasses.replace(job, not_before=time.monotonic() + SETTLE_S))
            return True
        if job.tentative:
            log.info("%s does not read as a package yet: waiting for its writer", job.path.name)
            return True
        return False

    def done(self, job: Job, outcome: str | None) -> None:
        """Delete a processed drop-in (``outcome`` None or not a refusal), set aside the rest."""
        if job.path is None or outcome == "cancelled":
            return
        try:
            if outcome is None or outcome in NOT_A_REFUSAL:
                job.path.unlink(missing_ok=True)
            elif os.path.lexists(job.path):
                self._rejected.mkdir(parents=True, exist_ok=True)
                job.path.replace(self._rejected / job.path.name)
                log.warning("moved %s to %s (%s)", job.path.name, self._rejected, outcome)
        except OSError as exc:
            log.warning("cannot clear %s: %s", job.path, exc)
