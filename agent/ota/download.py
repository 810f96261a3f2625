"""Downloading a model: the only module that does HTTP (``urllib.request``; also ``file://``).

``HttpFetcher.fetch(url, size, sha256, part)`` returns the verified bytes, or raises
``UpdateError`` with a stable reason:

- ``bad_url``           not http(s):// or file://
- ``no_space``          the disk cannot hold the download and the staged copy
- ``too_large``         the server announces or sends more than the manifest's size: the
                        transfer stops the moment it would exceed it (TUF "endless data")
- ``truncated``         the server has fewer bytes than the manifest says
- ``hash_mismatch``     the bytes are not the ones the signed manifest names
- ``download_timeout``  the per-download deadline passed (TUF "slow retrieval")
- ``download_failed``   HTTP errors or broken connections, after the retries
- ``cancelled``         the agent is stopping

Bytes go to ``<sha256>.part``; an interrupted transfer (connection cut, agent killed) resumes
from the end of that file with a ``Range`` request (a server that ignores it sends the whole
file again and we start over). Retries back off exponentially with jitter inside the deadline;
a token bucket caps the bandwidth. The ``.part`` file is never a candidate: only the bytes read
back from it whose sha256 matches are returned, and the caller uses those bytes, not the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import os
import random
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import agent
from agent.backoff import backoff_delay
from agent.errors import UpdateError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
CHUNK = 64 * 1024
SPACE_MARGIN = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Fetcher(Protocol):
    """Gets a model's bytes (tests swap in a fake the way httpx swaps its transport)."""

    def fetch(
        self,
        url: str,
        size: int,
        sha256: str,
        part: Path,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> bytes: ...


@dataclass(frozen=True)
class DownloadSettings:
    """Download limits: deadline, retries, bandwidth (bytes/s), backoff and socket timeout (s)."""

    timeout_s: float = 600.0
    retries: int = 5
    bandwidth_bps: float | None = None
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    socket_timeout_s: float = 15.0


class TokenBucket:
    """Allows ``rate`` bytes per second on average, bursts of at most ``burst`` bytes."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1024.0, rate / 4)
        self._tokens = self.burst
        self._t = time.monotonic()

    def take(self, n: int, stop: threading.Event) -> int:
        """Wait until ``min(n, burst)`` bytes may pass; return how many."""
        n = max(1, min(n, int(self.burst)))
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            if self._tokens >= n:
                self._tokens -= n
                return n
            if stop.wait((n - self._tokens) / self.rate):
                raise UpdateError("cancelled", "the agent is stopping")


class _Retry(Exception):
    """A failure worth another attempt (connection cut, 5xx, timeout)."""


def _fatal(reason: str, detail: str, part: Path | None = None) -> UpdateError:
    if part is not None:
        with contextlib.suppress(OSError):
            part.unlink()
    return UpdateError(reason, detail)


class HttpFetcher:
    """``Fetcher`` over HTTP(S) and ``file://`` with resume, retries, deadline and a cap."""

    def __init__(self, settings: DownloadSettings | None = None) -> None:
        self.settings = settings or DownloadSettings()
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto

    def fetch(
        self,
        url: str,
        size: int,
        sha256: str,
        part: Path,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> bytes:
        stop = stop or threading.Event()
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise UpdateError("bad_url", f"{url!r}: only http(s):// and file:// are supported")
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        bucket = TokenBucket(s.bandwidth_bps) if s.bandwidth_bps else None
        _prepare(part, size)
        failures = 0
        restarted = False
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have < size:
                try:
                    self._transfer(url, part, have, size, deadline, bucket, progress, stop)
                except _Retry as exc:
                    failures += 1
                    if failures > s.retries:
                        raise UpdateError(
                            "download_failed", f"{url}: {exc} (after {s.retries} retries)"
                        ) from exc
                    delay = backoff_delay(failures - 1, s.backoff_min_s, s.backoff_max_s, self._rng)
                    if time.monotonic() + delay > deadline:
                        raise UpdateError(
                            "download_timeout", f"{url}: {exc}; no time left for a retry"
                        ) from exc
                    log.warning(
                        "download of %s failed (%s): retry %d in %.1fs", url, exc, failures, delay
                    )
                    if stop.wait(delay):
                        raise UpdateError("cancelled", "the agent is stopping") from exc
                    continue
            data = _read_back(part, size)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) == size and digest == sha256:
                log.info("downloaded %s: %d bytes, sha256 verified", url, size)
                return data
            if have > 0 and not restarted:
                # Assembled from several transfers: a bad earlier piece; start over once.
                log.warning("%s: sha256 mismatch after a resume, downloading again", url)
                restarted = True
                part.unlink()
                continue
            raise _fatal(
                "hash_mismatch",
                f"{url}: sha256 {digest[:16]}..., the signed manifest says {sha256[:16]}...",
                part,
            )

    # ------------------------------------------------------------------ one transfer

    def _transfer(
        self,
        url: str,
        part: Path,
        have: int,
        size: int,
        deadline: float,
        bucket: TokenBucket | None,
        progress: Progress | None,
        stop: threading.Event,
    ) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpdateError("download_timeout", f"{url}: deadline passed at {have}/{size} bytes")
        timeout = min(self.settings.socket_timeout_s, remaining)
        if url.lower().startswith("file:"):
            stream, have = _open_file(url, part, have, size)
        else:
            stream, have = _open_http(url, part, have, size, timeout)
        with stream, part.open("ab") as out:
            chunk = CHUNK if bucket is None else max(1024, min(CHUNK, int(bucket.burst)))
            while have < size:
                if stop.is_set():
                    raise UpdateError("cancelled", "the agent is stopping")
                if time.monotonic() > deadline:
                    raise UpdateError(
                        "download_timeout",
                        f"{url}: {have}/{size} bytes when the {self.settings.timeout_s:g}s "
                        "deadline passed",
                    )
                n = min(chunk, size - have)
                if bucket is not None:
                    n = bucket.take(n, stop)
                try:
                    buf = stream.read1(n)  # what has arrived: stop/deadline stay prompt
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry(f"transfer broke at {have}/{size} bytes: {exc!r}") from exc
                if not buf:
                    break
                out.write(buf)
                out.flush()
                have += len(buf)
                if progress is not None:
                    progress(have, size)
            os.fsync(out.fileno())
            if have < size:
                raise _Retry(f"connection closed at {have}/{size} bytes")
            try:
                extra = stream.read(1)
            except (OSError, http.client.HTTPException):
                extra = b""  # we hold exactly `size` bytes; the sha256 decides
            if extra:
                raise _fatal(
                    "too_large",
                    f"{url}: the server sends more than the {size} bytes announced",
                    part,
                )


def stream_url(
    url: str,
    *,
    deadline: float,
    socket_timeout_s: float = 15.0,
    bandwidth_bps: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """The body of ``url`` in chunks, inside one deadline and under the bandwidth cap (for
    small files such as TUF metadata: the caller caps the length). ``UpdateError`` reasons:
    ``bad_url``, ``not_found`` (HTTP 403/404, a missing ``file://``), ``download_failed``,
    ``download_timeout``, ``cancelled``."""
    stop = stop or threading.Event()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise UpdateError("bad_url", f"{url!r}: only http(s):// and file:// are supported")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise UpdateError("download_timeout", f"{url}: no time left")
    stream: io.BufferedIOBase
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            stream = path.open("rb")
        except FileNotFoundError as exc:
            raise UpdateError("not_found", f"{url}: no such file") from exc
        except OSError as exc:
            raise UpdateError("download_failed", f"{url}: {exc.strerror or exc}") from exc
    else:
        headers = {"User-Agent": f"edge-agent/{agent.__version__}", "Accept-Encoding": "identity"}
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
        try:
            stream = urllib.request.urlopen(req, timeout=min(socket_timeout_s, remaining))  # noqa: S310
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = "not_found" if exc.code in (403, 404) else "download_failed"
            raise UpdateError(reason, f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise UpdateError(
                "download_failed", f"{url}: cannot connect: {getattr(exc, 'reason', exc)!r}"
            ) from exc
    bucket = TokenBucket(bandwidth_bps) if bandwidth_bps else None
    with stream:
        while True:
            if stop.is_set():
                raise UpdateError("cancelled", "the agent is stopping")
            if time.monotonic() > deadline:
                raise UpdateError("download_timeout", f"{url}: the deadline passed")
            n = (
                CHUNK
                if bucket is None
                else bucket.take(max(1024, min(CHUNK, int(bucket.burst))), stop)
            )
            try:
                buf = stream.read1(n)
            except (OSError, http.client.HTTPException) as exc:
                raise UpdateError("download_failed", f"{url}: transfer broke: {exc!r}") from exc
            if not buf:
                return
            yield buf


def _prepare(part: Path, size: int) -> None:
    """Create the download directory, drop other ``.part`` files, check free space."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        for other in part.parent.glob("*.part"):
            if other != part:
                other.unlink()
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        free = shutil.disk_usage(part.parent).free
    except OSError as exc:
        raise UpdateError("storage", f"cannot prepare {part}: {exc}") from exc
    need = (size - have) + size + SPACE_MARGIN  # the download, then the staged copy
    if free < need:
        raise UpdateError(
            "no_space", f"{part.parent} has {free} bytes free, the update needs {need}"
        )


def _read_back(part: Path, size: int) -> bytes:
    try:
        with part.open("rb") as f:
            return f.read(size + 1)
    except OSError as exc:
        raise UpdateError("storage", f"cannot read back {part}: {exc}") from exc


def _open_file(url: str, part: Path, have: int, size: int) -> tuple[io.BufferedIOBase, int]:
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        f = path.open("rb")
        actual = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise UpdateError("download_failed", f"{url}: {exc.strerror or exc}") from exc
    if actual != size:
        f.close()
        reason = "too_large" if actual > size else "truncated"
        raise _fatal(reason, f"{url} has {actual} bytes, the manifest says {size}", part)
    f.seek(have)
    return f, have


def _open_http(
    url: str, part: Path, have: int, size: int, timeout: float
) -> tuple[io.BufferedIOBase, int]:
    headers = {"User-Agent": f"edge-agent/{agent.__version__}", "Accept-Encoding": "identity"}
    if have:
        log.info("resuming %s at byte %d of %d", url, have, size)
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            raise _fatal(
                "truncated",
                f"{url}: the server has no bytes past {have}, manifest says {size}",
                part,
            ) from exc
        if exc.code in _RETRY_STATUS:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
        raise UpdateError("download_failed", f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(f"cannot connect: {getattr(exc, 'reason', exc)!r}") from exc
    try:
        have = _check_response(resp, url, part, have, size)
    except BaseException:
        resp.close()
        raise
    return resp, have


def _check_response(
    resp: http.client.HTTPResponse, url: str, part: Path, have: int, size: int
) -> int:
    """Check the status and headers against the manifest; return the offset the body starts at."""
    length_hdr = resp.headers.get("Content-Length")
    length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
    if resp.status == 206 and have:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != have:
            raise _Retry(f"unusable Content-Range {resp.headers.get('Content-Range')!r}")
        if m.group(3) != "*" and int(m.group(3)) != size:
            total = int(m.group(3))
            reason = "too_large" if total > size else "truncated"
            raise _fatal(reason, f"{url} has {total} bytes, the manifest says {size}", part)
    elif resp.status == 200:
        if have:
            log.info("%s ignored the Range request: downloading from the start", url)
            part.write_bytes(b"")
            have = 0
        if length is not None and length < size:
            raise _fatal("truncated", f"{url} has {length} bytes, the manifest says {size}", part)
    else:
        raise _Retry(f"unexpected HTTP status {resp.status}")
    if length is not None and have + length > size:
        raise _fatal(
            "too_large",
            f"{url} announces {have + length} bytes, the manifest says {size}",
            part,
        )
    return have
