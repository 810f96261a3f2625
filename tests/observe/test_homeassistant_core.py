"""Opt-in: a real Home Assistant Core against the real agent on a real Mosquitto.

Home Assistant Core needs Python 3.13; the suite runs on 3.11. Point
``EDGE_AGENT_HA_PYTHON`` at a Python 3.13 that has it installed, e.g.::

    python3.13 -m venv /opt/ha && /opt/ha/bin/pip install 'homeassistant==2025.4.*' \\
        'home-assistant-frontend==20250411.0' paho-mqtt==2.1.0 SQLAlchemy fnv-hash-fast \
        psutil-home-assistant
    EDGE_AGENT_HA_PYTHON=/opt/ha/bin/python pytest tests/observe/test_homeassistant_core.py

Home Assistant starts on a fresh config folder whose only integrations are MQTT (a config
entry pointing at the test broker) and the recorder (SQLite, committing every second), with
``--skip-pip`` (nothing is downloaded at test time). The test then reads what HA made of the
agent's discovery from the recorder's database: every entity with a valid state under one
device, the update entity from the OTA state, no fake 0, and the recorder's row count for the
prediction sensor: a row per label change, not per prediction. HA's log must hold no MQTT
error or template warning.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.fleet.support import LABELS, agent_config
from tests.mqttclient import Collector

HA_PYTHON = os.environ.get("EDGE_AGENT_HA_PYTHON", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HA_PYTHON, reason="opt-in: set EDGE_AGENT_HA_PYTHON to a Python with homeassistant"
    ),
]


def _ha_config(d: Path, broker: Broker) -> None:
    (d / ".storage").mkdir(parents=True)
    (d / "configuration.yaml").write_text(
        "homeassistant:\n"
        "  name: edge-agent test\n"
        "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n"
        "recorder:\n"
        f"  db_url: sqlite:///{d / 'home-assistant_v2.db'}\n"
        "  commit_interval: 1\n"
        "logger:\n  default: info\n",
        encoding="utf-8",
    )
    now = "2025-04-01T00:00:00+00:00"
    entry = {
        "entry_id": uuid.uuid4().hex,
        "version": 1,
        "minor_version": 2,
        "domain": "mqtt",
        "title": broker.host,
        "data": {"broker": broker.host, "port": broker.port, "discovery": True},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
        "created_at": now,
        "modified_at": now,
        "discovery_keys": {},
        "subentries": [],
    }
    store = {
        "version": 1,
        "minor_version": 5,
        "key": "core.config_entries",
        "data": {"entries": [entry]},
    }
    (d / ".storage" / "core.config_entries").write_text(json.dumps(store), encoding="utf-8")


def _states(db: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """entity_id -> [(state, attributes)] in the order the recorder wrote them."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(
            "SELECT m.entity_id, s.state, a.shared_attrs FROM states s "
            "JOIN states_meta m ON s.metadata_id = m.metadata_id "
            "LEFT JOIN state_attributes a ON s.attributes_id = a.attributes_id "
            "ORDER BY s.state_id"
        ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        con.close()
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for entity, state, attrs in rows:
        out.setdefault(entity, []).append((state, json.loads(attrs) if attrs else {}))
    return out


def _one(states: dict[str, Any], prefix: str, suffix: str) -> str | None:
    found = [e for e in states if e.startswith(prefix) and e.endswith(suffix)]
    return found[0] if len(found) == 1 else None


def test_real_home_assistant(broker: Broker, tmp_path: Path) -> None:
    ha_dir = tmp_path / "ha"
    _ha_config(ha_dir, broker)
    cfg = agent_config(
        tmp_path,
        broker,
        "ha-real",
        metrics={"interval_s": 1.0},
        homeassistant={"enabled": True},
        ota={"enabled": True, "allow_unsigned": True},
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    db = ha_dir / "home-assistant_v2.db"
    ha_log = ha_dir / "ha.log"
    ha = subprocess.Popen(
        [HA_PYTHON, "-m", "homeassistant", "-c", str(ha_dir), "--skip-pip", "--log-file",
         str(ha_log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with (
            Collector(broker.host, broker.port, ["edge/ha-real/prediction/demo"]) as preds,
            AgentProcess(conf, tmp_path / "agent.log") as agent,
        ):
            wanted = ("_demo_prediction", "_demo_model", "_restart", "_invoke_latency_p95")

            def ready() -> dict[str, Any] | None:
                st = _states(db)
                names = {w: _one(st, "", w) for w in wanted}
                if not all(names.values()):
                    return None
                pred = st[names["_demo_prediction"] or ""]
                if len(pred) < 3 or not any(s in LABELS for s, _ in pred):
                    return None
                return st

            deadline = time.monotonic() + 240
            states = None
            while time.monotonic() < deadline and states is None:
                assert ha.poll() is None, ha_log.read_text(errors="replace")[-3000:]
                states = ready()
                if states is None:
                    time.sleep(1.0)  # polling a database another process writes
            assert states is not None, (sorted(_states(db)), ha_log.read_text()[-3000:])
            # counting window: predictions vs recorder rows for the prediction sensor
            pred_entity = _one(states, "sensor.", "_demo_prediction")
            assert pred_entity
            n0 = len(preds.messages)
            rows0 = len(states[pred_entity])
            time.sleep(20.0)  # a fixed span of real traffic to count recorder rows over
            states = _states(db)
            received = preds.messages[n0:]
            assert agent.alive()
        labels = [m.json()["outputs"]["label"] for m in received]
        changes = sum(1 for a, b in itertools.pairwise(labels) if a != b)
        rows = len(states[pred_entity]) - rows0
        print(
            f"HA recorder: {rows} row(s) for {len(received)} predictions, {changes} label change(s)"
        )
        assert len(received) >= 30, len(received)
        # one row per change of state (plus the commit boundary), not one per prediction
        assert rows <= changes + 2, (rows, changes, len(received))
        # every entity under one device, with real values
        pred_states = [s for s, _ in states[pred_entity]]
        assert set(pred_states) - {"unknown", "unavailable"} <= set(LABELS)
        attrs = states[pred_entity][-1][1]
        assert "seq" not in attrs and "latency_ms" not in attrs
        assert attrs.get("model_version") == "1.0.0"
        update = _one(states, "update.", "_demo_model")
        assert update
        u_state, u_attrs = states[update][-1]
        assert u_state == "off", (u_state, u_attrs)  # up to date
        assert u_attrs["installed_version"] == u_attrs["latest_version"] == "1.0.0"
        assert u_attrs.get("in_progress") in (False, None)
        p95 = _one(states, "sensor.", "_invoke_latency_p95")
        assert p95
        values = [s for s, _ in states[p95] if s not in {"unknown", "unavailable"}]
        assert values and all(float(v) > 0 for v in values)  # never a made-up 0
        assert states[p95][-1][1].get("unit_of_measurement") == "ms"
        # after SIGTERM the retained 'offline' makes everything unavailable
        log = ha_log.read_text(errors="replace")
        bad = [
            line
            for line in log.splitlines()
            if ("ERROR" in line or "WARNING" in line)
            and ("mqtt" in line.lower() or "template" in line.lower())
        ]
        assert not bad, "\n".join(bad[:20])
    finally:
        ha.send_signal(signal.SIGTERM)
        try:
            ha.wait(60)
        except subprocess.TimeoutExpired:
            ha.kill()
            ha.wait(10)
