"""Watch mode: models dropped into a folder are converted, verified, packaged, signed, published.

``edge-convert watch DROP_DIR`` reads ``DROP_DIR/edge-convert.toml`` (``WatchConfig``; read again
for every model, so edits apply to the next drop) and watches the folder with ``watchdog``.

A dropped file is taken only once it is completely written: at once after a rename into the
folder (the atomic way to drop), shortly after a close-after-write event, or when its size and
mtime have not changed for ``watch.settle_s`` (writers that keep the file open, network
shares without inotify). A SavedModel directory is taken once it holds ``saved_model.pb`` and
nothing under it has changed for ``settle_s``. Hidden files and ``*.tmp`` / ``*.part`` are
ignored.

Every input gets ``<input>.report.json`` next to it, success or not; an input that already
has a report is not processed again (delete the report to retry). A failed step publishes
nothing and names itself and the reason in the report.
"""

from __future__ import annotations

import fnmatch
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from watchdog.events import (
    FileClosedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer

from agent.durable import atomic_write
from agent.errors import EdgeAgentError
from agent.release.manifest import VerificationReport, utc_now
from agent.release.package import write_package
from converters.build import build_package
from converters.convert import sha256_of_file
from converters.publish import next_version, publish_package
from converters.settings import WATCH_CONFIG_NAME, WatchConfig, load_watch_config
from converters.store import open_store
from converters.verify import VerificationFailed

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".report.json"
_CLOSE_GRACE_S = 0.2
_VERSION_IN_NAME = re.compile(r"-(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$")

Step = Literal["config", "version", "build", "verify", "package", "publish"]


class DropReport(BaseModel):
    """``<input>.report.json``: what happened to one dropped model."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="Version of this report's schema.")
    input: str = Field(description="The dropped file or directory name.")
    input_sha256: str | None = Field(default=None, description="sha256 of a dropped file.")
    status: Literal["published", "built", "failed"] = Field(description="Outcome.")
    failed_step: Step | None = Field(default=None, description="Which step failed.")
    error: str | None = Field(default=None, description="Why it failed.")
    name: str | None = Field(default=None, description="Model name.")
    version: str | None = Field(default=None, description="Package version.")
    mode: str | None = Field(default=None, description="Conversion mode.")
    verification: VerificationReport | None = Field(default=None, description="Verification.")
    package: str | None = Field(default=None, description="Package file written (no store).")
    url: str | None = Field(default=None, description="Published model URL.")
    package_url: str | None = Field(default=None, description="Published package URL.")
    topic: str | None = Field(default=None, description="Announcement topic.")
    channel: str | None = Field(default=None, description="Channel announced on.")
    started: datetime = Field(description="Processing start (UTC).")
    finished: datetime | None = Field(default=None, description="Processing end (UTC).")


def report_path(input_path: Path) -> Path:
    """Where the report of ``input_path`` is written."""
    return input_path.with_name(input_path.name + REPORT_SUFFIX)


def version_from_name(path: Path) -> str | None:
    """``vibration-1.2.3.keras`` -> ``1.2.3``."""
    stem = path.name if path.is_dir() else path.stem
    m = _VERSION_IN_NAME.search(stem)
    return m.group(1) if m else None


def process_drop(folder: Path, path: Path) -> DropReport:
    """Run the whole chain for one input and write its report; never raises EdgeAgentError."""
    report = DropReport(
        input=path.name, input_sha256=sha256_of_file(path), status="failed", started=utc_now()
    )
    step: Step = "config"
    try:
        cfg = load_watch_config(folder / WATCH_CONFIG_NAME)
        report.name = cfg.build.name
        step = "version"
        store = None
        if cfg.publish is not None:
            p = cfg.publish
            store = open_store(p.store, p.base_url, p.s3_endpoint_url)
        version = version_from_name(path) or cfg.build.version
        if version is None:
            version = (
                next_version(store, cfg.build.name, cfg.build.initial_version)
                if store is not None
                else cfg.build.initial_version
            )
        report.version = version
        step = "build"
        built = build_package(path, cfg.build, version=version)
        report.mode = built.converted.mode
        report.verification = built.converted.report
        if cfg.publish is None or store is None:
            step = "package"
            out = path.with_name(built.package.filename)
            write_package(out, built.package)
            report.package = out.name
            report.status = "built"
        else:
            step = "publish"
            result = publish_package(built.package, cfg.publish, store)
            report.url, report.package_url = result.url, result.package_url
            report.topic, report.channel = result.topic, cfg.publish.channel
            report.status = "published"
    except VerificationFailed as exc:
        report.failed_step, report.error = "verify", str(exc)
        report.verification = exc.report
    except EdgeAgentError as exc:
        report.failed_step, report.error = step, str(exc)
    except Exception as exc:  # a bug or a library's surprise: still leave a report
        log.exception("unexpected error processing %s", path)
        report.failed_step, report.error = step, f"{type(exc).__name__}: {exc}"
    report.finished = utc_now()
    atomic_write(report_path(path), report.model_dump_json(indent=2).encode())
    if report.status == "failed":
        log.error("%s: %s failed: %s", path.name, report.failed_step, report.error)
    else:
        log.info("%s: %s %s %s", path.name, report.status, report.name, report.version)
    return report


@dataclass
class _Pending:
    signature: tuple[int, float]
    changed: float
    closed: bool = False
    moved: bool = False


class DropWatcher:
    """Watches ``folder`` and runs ``process_drop`` for each completely written model."""

    def __init__(
        self,
        folder: Path,
        *,
        settle_s: float | None = None,
        on_report: Callable[[Path, DropReport], None] | None = None,
    ) -> None:
        self.folder = folder.resolve()
        cfg_settle = None
        try:
            cfg: WatchConfig | None = load_watch_config(self.folder / WATCH_CONFIG_NAME)
        except EdgeAgentError as exc:
            log.error("%s", exc)  # reported again (in each report) until it is fixed
            cfg = None
        if cfg is not None:
            cfg_settle = cfg.watch.settle_s
            self.patterns = list(cfg.watch.patterns)
        else:
            self.patterns = ["*.keras", "*.h5", "*.tflite", "*.onnx"]
        self.settle_s = settle_s if settle_s is not None else (cfg_settle or 1.0)
        self.on_report = on_report
        self._events: queue.Queue[tuple[Path, str]] = queue.Queue()
        self._pending: dict[Path, _Pending] = {}
        self._stop = threading.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ which paths

    def candidate(self, path: Path) -> Path | None:
        """The top-level input an event path belongs to, or None when it is not one."""
        try:
            rel = path.resolve().relative_to(self.folder)
        except ValueError:
            return None
        if not rel.parts:
            return None
        top = self.folder / rel.parts[0]
        name = top.name
        if name.startswith(".") or name.endswith((".tmp", ".part", REPORT_SUFFIX, ".eapkg")):
            return None
        if name == WATCH_CONFIG_NAME:
            return None
        if len(rel.parts) > 1 or top.is_dir():
            return top  # a directory: a SavedModel once saved_model.pb is there
        if any(fnmatch.fnmatch(name, p) for p in self.patterns):
            return top
        return None

    def _signature(self, path: Path) -> tuple[int, float] | None:
        try:
            if path.is_dir():
                stats = [p.stat() for p in path.rglob("*") if p.is_file()]
                return (sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0))
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime)

    def _ready(self, path: Path, p: _Pending, now: float) -> bool:
        if path.is_dir() and not (path / "saved_model.pb").exists():
            return False
        if p.moved:
            return True
        quiet = now - p.changed
        return (p.closed and quiet >= _CLOSE_GRACE_S) or quiet >= self.settle_s

    # ------------------------------------------------------------------ running

    def enqueue_existing(self) -> None:
        for child in sorted(self.folder.iterdir()):
            top = self.candidate(child)
            if top is not None and not report_path(top).exists():
                self._events.put((top, "existing"))

    def start(self) -> None:
        """Watch in the background (processing what is already there first)."""
        self.enqueue_existing()
        handler = _Handler(self)
        self._observer = Observer()
        self._observer.schedule(handler, str(self.folder), recursive=True)
        self._observer.start()
        self._worker = threading.Thread(target=self._run, name="drop-watcher", daemon=True)
        self._worker.start()
        log.info(
            "watching %s (settle %.1fs, patterns %s)", self.folder, self.settle_s, self.patterns
        )

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._worker is not None:
            self._worker.join(timeout=600)

    def run_once(self) -> list[DropReport]:
        """Process what is in the folder now (no watching): for cron jobs and CI."""
        self.enqueue_existing()
        reports = []
        while not self._events.empty():
            path, _ = self._events.get_nowait()
            if not report_path(path).exists():
                reports.append(self._process(path))
        return reports

    def _process(self, path: Path) -> DropReport:
        report = process_drop(self.folder, path)
        if self.on_report is not None:
            self.on_report(path, report)
        return report

    def _run(self) -> None:
        tick = min(self.settle_s, _CLOSE_GRACE_S) / 2
        while not self._stop.is_set():
            try:
                path, kind = self._events.get(timeout=tick if self._pending else 0.5)
                self._note(path, kind)
                continue  # drain bursts of events before checking readiness
            except queue.Empty:
                pass
            now = time.monotonic()
            for path, p in list(self._pending.items()):
                sig = self._signature(path)
                if sig is None:  # deleted or moved away before it settled
                    del self._pending[path]
                    continue
                if sig != p.signature:
                    p.signature, p.changed = sig, now
                    continue
                if self._ready(path, p, now):
                    del self._pending[path]
                    if report_path(path).exists():
                        continue
                    self._process(path)

    def _note(self, path: Path, kind: str) -> None:
        sig = self._signature(path)
        if sig is None:
            self._pending.pop(path, None)
            return
        now = time.monotonic()
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = _Pending(sig, now)
        elif sig != p.signature or kind == "modified":
            p.signature, p.changed = sig, now
            p.closed = False
        if kind == "closed":
            p.closed = True
        if kind == "moved":
            p.moved = True


class _Handler(FileSystemEventHandler):
    """Turns watchdog events (on its thread) into queue items; does no work itself."""

    def __init__(self, watcher: DropWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in {"opened", "closed_no_write", "deleted"}:
            return
        kind = event.event_type
        src = event.dest_path if isinstance(event, FileSystemMovedEvent) else event.src_path
        path = Path(src if isinstance(src, str) else src.decode())
        top = self.watcher.candidate(path)
        if top is None:
            return
        if isinstance(event, FileClosedEvent) and top != path:
            kind = "modified"  # a file inside a SavedModel directory: wait for quiet
        if kind == "moved" and top != path:
            kind = "modified"
        self.watcher._events.put((top, kind))


def watch_forever(folder: Path, stop: threading.Event) -> None:
    """Watch until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM)."""
    watcher = DropWatcher(folder)
    watcher.start()
    try:
        stop.wait()
    finally:
        watcher.stop()
