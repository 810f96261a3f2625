"""The real agent and systemd: READY, STATUS, WATCHDOG while healthy, none when stalled, STOPPING.

A real datagram socket is NOTIFY_SOCKET. The stall is injected at the runtime seam: the model's
invoke blocks, as a hung inference would.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.app.service import Agent
from agent.config import load_config
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker
from tests.deploy.notify_listener import Message, NotifyListener


def config(tmp: Path, broker: Broker) -> dict[str, Any]:
    return {
        "agent": {"device_id": "sd-dev", "state_dir": str(tmp / "state")},
        "sources": [
            {
                "type": "synthetic",
                "name": "syn",
                "rate_hz": 400.0,
                "block_size": 8,
                "frequency_hz": [1.0, 0.5, 2.0],
            }
        ],
        "mqtt": {"host": broker.host, "port": broker.port},
    }


def wait_for(listener: NotifyListener, key: str, timeout: float = 20.0) -> Message:
    while True:
        msg = listener.recv(timeout)
        if key in msg.fields:
            return msg


def test_real_agent_notifies_ready_watchdog_and_stopping(tmp_path: Path, broker: Broker) -> None:
    listener = NotifyListener()
    conf = write_config(tmp_path / "agent.toml", config(tmp_path, broker))
    env = {"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "400000"}
    agent = AgentProcess(conf, tmp_path / "agent.log", env=env).start()
    try:
        ready = wait_for(listener, "READY")
        assert ready.fields["READY"] == "1"
        assert ready.pid == agent.proc.pid  # type: ignore[union-attr]
        assert "model demo" in ready.fields.get("STATUS", "")
        pings = [m for m in listener.collect(1.5) if m.fields.get("WATCHDOG") == "1"]
        assert len(pings) >= 3  # every 0.2 s while healthy
        code, _ = agent.terminate()
        assert code == 0
        assert wait_for(listener, "STOPPING").fields["STOPPING"] == "1"
    finally:
        if agent.alive():
            agent.kill()
        listener.close()


class _HangingModel:
    """The runtime seam with a fault: invoke blocks until released."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.hang = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run_native(self, x: np.ndarray) -> list[np.ndarray]:
        if self.hang.is_set():
            self.release.wait()
        out: list[np.ndarray] = self._inner.run_native(x)
        return out


def test_watchdog_pings_stop_when_inference_hangs(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = NotifyListener()
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    conf = write_config(tmp_path / "agent.toml", config(tmp_path, broker))
    cfg = load_config(conf, environ={})
    agent = Agent(cfg, conf)
    agent.stall_s = 0.5
    running = agent.build(cfg)
    hanging = _HangingModel(running.pipeline.active.model)
    running.pipeline.active.model = hanging  # type: ignore[assignment]
    agent.start(running)
    try:
        wait_for(listener, "READY")
        assert any(m.fields.get("WATCHDOG") == "1" for m in listener.collect(0.6))
        hanging.hang.set()
        listener.collect(1.0)  # the stall is noticed after stall_s
        assert not agent.healthy()
        after = [m for m in listener.collect(1.0) if m.fields.get("WATCHDOG") == "1"]
        assert after == [], "watchdog pinged while inference was hung"
        hanging.release.set()
        hanging.hang.clear()
        assert any(m.fields.get("WATCHDOG") == "1" for m in listener.collect(1.5))
    finally:
        hanging.release.set()
        agent.shutdown(running, final_status=True)
        listener.close()
