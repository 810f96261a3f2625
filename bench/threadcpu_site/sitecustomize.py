"""Loaded into the agent by ``bench.threadcpu`` (this folder first on ``PYTHONPATH``).

- names every Python thread at the OS level (``prctl(PR_SET_NAME)``), so that
  ``/proc/PID/task/*/comm`` tells the threads apart;
- with ``BENCH_STAGE_CPU=FILE``: wraps the data path's stages (``STAGES``) with
  ``time.thread_time_ns`` (the calling thread's CPU, kernel time included) and writes the
  totals and call counts to FILE as JSON twice a second. Inclusive times: a stage's figure
  contains the stages it calls. The wrappers cost a little themselves (two clock reads).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import threading
import time
from typing import Any

try:
    _libc: Any = ctypes.CDLL(None)
except OSError:  # not glibc-like: threads stay unnamed
    _libc = None

_run = threading.Thread.run


def _named_run(self: threading.Thread) -> None:
    if _libc is not None:
        _libc.prctl(15, self.name[:15].encode(), 0, 0, 0)  # PR_SET_NAME
    _run(self)


threading.Thread.run = _named_run  # type: ignore[method-assign]

STAGES = (
    ("agent.ingest.sources.pacing", "Schedule.wait"),
    ("agent.ingest.window", "StreamWindowers.push"),
    ("agent.pipeline.threads", "Pipeline._process"),
    ("agent.model.runtime", "Model.run_native"),
    ("agent.delivery.publisher", "Publisher._round"),
    ("agent.delivery.publisher", "Publisher._spool_records"),
    ("agent.delivery.publisher", "Publisher._pump"),
    ("agent.delivery.spool", "Spool.append"),
    ("agent.delivery.mqtt.client", "_TcpBuffer.publish"),
)

_FILE = os.environ.get("BENCH_STAGE_CPU", "")
_tot: dict[str, int] = {}
_cnt: dict[str, int] = {}


def _wrap(modname: str, qual: str) -> None:
    obj: Any = importlib.import_module(modname)
    *path, name = qual.split(".")
    for p in path:
        obj = getattr(obj, p)
    fn = getattr(obj, name)
    clock = time.thread_time_ns

    def timed(*a: Any, **k: Any) -> Any:
        t = clock()
        try:
            return fn(*a, **k)
        finally:
            _tot[qual] = _tot.get(qual, 0) + clock() - t
            _cnt[qual] = _cnt.get(qual, 0) + 1

    setattr(obj, name, timed)


def _watch() -> None:
    # wrap once the agent has imported its data path (the classes exist by then); the
    # stages are looked up per call, so wrapping after the pipeline started is fine
    while not all(m in sys.modules and hasattr(sys.modules[m], q.split(".")[0]) for m, q in STAGES):
        time.sleep(0.1)
    time.sleep(0.5)
    for m, q in STAGES:
        _wrap(m, q)
    while True:
        tmp = _FILE + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"cpu_ns": dict(_tot), "calls": dict(_cnt)}, fh)
        os.replace(tmp, _FILE)
        time.sleep(0.5)


if _FILE:
    threading.Thread(target=_watch, name="bench-stages", daemon=True).start()
