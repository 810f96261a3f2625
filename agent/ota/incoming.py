"""The drop-in folder: a package copied into ``incoming/`` (USB stick, scp) is offered locally.

Watched with ``watchdog`` (inotify on Linux), not polled. A file is only handed on once it is
complete: on ``closed`` (the writer closed it: ``IN_CLOSE_WRITE``) or ``moved`` within the
folder (rsync and careful copiers write a temp name and rename). A file moved in from elsewhere
(``mv`` from another folder: inotify's unpaired ``IN_MOVED_TO``, which watchdog reports as
``created``) gets no close event: it is handed on as *tentative* and looked at once it has not
changed for a moment (``agent.ota.intake``). Only ``*.eapkg`` (packages) and ``*.eatuf``
(offline TUF bundles) names count; dot files and sub-folders (``rejected/``) are ignored.
``scan()`` offers what was already there when the agent started. The updater settles files that
still look incomplete (see ``agent.ota.updater``) before it rejects them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.release.package import BUNDLE_SUFFIX, PACKAGE_SUFFIX

log = logging.getLogger(__name__)

OnFile = Callable[[Path, bool], None]
"""Called with the path and ``tentative``: True when nobody here closed it after writing
(moved in from another file system or folder, or just created)."""


def is_candidate(path: Path) -> bool:
    """True for a visible ``.eapkg`` or offline bundle file."""
    return path.name.endswith((PACKAGE_SUFFIX, BUNDLE_SUFFIX)) and not path.name.startswith(".")


class _Handler(FileSystemEventHandler):
    """Hands complete ``*.eapkg`` files in the folder to ``on_file``."""

    def __init__(self, directory: Path, on_file: OnFile) -> None:
        super().__init__()
        self._dir = directory
        self._on_file = on_file

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == "closed":
            raw, tentative = event.src_path, False
        elif event.event_type == "moved":
            raw, tentative = event.dest_path, False
        elif event.event_type == "created":
            # also a file moved in from outside the folder (watchdog reports an unpaired
            # IN_MOVED_TO as created): no close will follow, so it is looked at once settled
            raw, tentative = event.src_path, True
        else:
            return
        path = Path(os.fsdecode(raw))
        if path.parent == self._dir and is_candidate(path):
            log.info("incoming package %s", path.name)
            self._on_file(path, tentative)


class IncomingWatcher:
    """Watches the drop-in folder and calls ``on_file`` for model packages that appear."""

    def __init__(self, directory: Path, on_file: OnFile) -> None:
        self.directory = directory
        self._on_file = on_file
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(_Handler(self.directory, self._on_file), str(self.directory))
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watching %s for model packages", self.directory)

    def scan(self) -> None:
        """Offer the packages already in the folder."""
        try:
            entries = sorted(self.directory.iterdir())
        except OSError as exc:
            log.warning("cannot list %s: %s", self.directory, exc)
            return
        for p in entries:
            if is_candidate(p) and not p.is_dir():  # special files too: they are refused
                self._on_file(p, False)

    def stop(self, timeout: float = 1.0) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
