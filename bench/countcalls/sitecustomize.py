"""Counts the Python and C calls of the process (in total, per function, and the Python calls
per thread) it is loaded into (``bench.accounting``).

Put this folder first on ``PYTHONPATH`` and set ``BENCH_COUNT_CALLS=FILE``: every thread's
calls are counted by a profile hook (``threading.setprofile``), and the totals plus the most
called functions are written to FILE as JSON twice a second. Slow (a Python hook per call):
only counts are read from such a run, never times.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

_FILE = os.environ.get("BENCH_COUNT_CALLS", "")
if _FILE:
    _counts: collections.Counter[str] = collections.Counter()

    _threads: collections.Counter[int] = collections.Counter()  # calls per thread ident
    _ident = threading.get_ident

    def _hook(frame: object, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code  # type: ignore[attr-defined]
            # the last three path parts: paho/mqtt/client.py is not delivery/mqtt/client.py
            _counts[f"{'/'.join(code.co_filename.rsplit('/', 3)[-3:])}:{code.co_name}"] += 1
            _threads[_ident()] += 1
        elif event == "c_call":
            _counts["C " + getattr(arg, "__qualname__", getattr(arg, "__name__", "?"))] += 1

    def _dump() -> None:
        sys.setprofile(None)
        while True:
            time.sleep(0.5)
            snap = dict(_counts)
            py = sum(v for k, v in snap.items() if not k.startswith("C "))
            c = sum(v for k, v in snap.items() if k.startswith("C "))
            top = sorted(snap.items(), key=lambda kv: -kv[1])[:400]
            names = {t.ident: t.name for t in threading.enumerate()}
            per_thread: dict[str, int] = collections.Counter()
            for ident, v in dict(_threads).items():
                per_thread[names.get(ident, "ended")] += v
            tmp = _FILE + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(
                    {"t": time.time(), "py": py, "c": c, "top": top, "threads": per_thread}, fh
                )
            os.replace(tmp, _FILE)

    threading.Thread(target=_dump, name="bench-count-calls", daemon=True).start()
    threading.setprofile(_hook)
    sys.setprofile(_hook)
