"""Over-the-air model updates: where updates are applied (docs/ota.md).

    decide.py    trust (Ed25519), version floor, targeting; compat.py: fits the pipeline?
    download.py  the only HTTP client: resume, retries, deadline, bandwidth cap, sha256
    smoke.py     golden samples in a fresh interpreter from the verified bytes
    store.py     versions on disk, the ``current``/``previous`` symlinks, bad marks
    state.py     the persisted state machine (and the test-only pause hook)
    health.py    the health window after a swap, the boot counter
    boot.py      at start: resume or roll back, then load the installed model
    updater.py   the orchestrator thread; incoming.py: the drop-in folder
    report.py    the retained ``OtaStateV1`` message

The agent calls ``startup_model(cfg)`` when it loads its model and runs an ``Updater`` when
``ota.enabled``.

``tufcheck.py`` runs in a child process (``python -m agent.ota.tufcheck``); so that it does not
pull in the model runtime, this package's names are imported lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.ota.boot import startup_model
    from agent.ota.updater import Updater
    from agent.wire.ota import OtaStateV1

__all__ = ["OtaStateV1", "Updater", "startup_model"]
_WHERE = {
    "startup_model": "agent.ota.boot",
    "Updater": "agent.ota.updater",
    "OtaStateV1": "agent.wire.ota",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
