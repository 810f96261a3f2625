"""``edge-agent demo``: see predictions flowing on a machine with nothing set up.

Broker: a Mosquitto already listening on localhost:1883 if there is one; otherwise a private
Mosquitto started on a free port if the binary is installed; otherwise the pure-Python
``amqtt`` broker (``pip install 'edge-agent[demo]'``). The agent runs on its embedded defaults
(demo model, synthetic source) and a second MQTT client prints what arrives.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from agent.app.logs import setup_logging
from agent.config import load_config
from agent.delivery.mqtt import MqttLink
from agent.errors import EdgeAgentError

_MOSQUITTO = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.3):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EdgeAgentError(f"the demo broker exited with code {proc.returncode}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise EdgeAgentError(f"the demo broker did not listen on port {port} within {timeout}s")


@contextlib.contextmanager
def demo_broker(workdir: Path, kind: str = "auto") -> Iterator[tuple[int, str, str]]:
    """Yield (port, protocol, description) of a broker the demo can use."""
    if kind == "auto" and _listening(1883):
        yield 1883, "5", "the Mosquitto/broker already on localhost:1883"
        return
    port = _free_port()
    mosquitto = next((p for p in (shutil.which(c) for c in _MOSQUITTO) if p), None)
    if kind == "mosquitto" and not mosquitto:
        raise EdgeAgentError("mosquitto is not installed (apt-get install mosquitto)")
    if mosquitto and kind != "amqtt":
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        argv, protocol, what = [mosquitto, "-c", str(conf)], "5", f"a private Mosquitto on {port}"
    else:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise EdgeAgentError(
                "no MQTT broker: install Mosquitto (apt-get install mosquitto) or the pure-Python "
                "one (pip install 'edge-agent[demo]')"
            ) from None
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        argv = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        protocol, what = "3.1.1", f"the embedded amqtt broker on {port}"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield port, protocol, what
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _line(topic: str, payload: bytes) -> str:
    if topic.endswith("/status"):
        return f"{topic}  {payload.decode(errors='replace')}"
    if topic.endswith("/metrics"):
        try:
            m = json.loads(payload)
            return f"{topic}  uptime {m['uptime_s']:.0f}s, predictions {m['predictions_out']}"
        except (ValueError, KeyError, TypeError):
            return f"{topic}  (metrics)"
    try:
        p = json.loads(payload)
        out = p.get("outputs", {})
        label = out.get("label")
        score = out.get("score")
        what = f"{label} {score:.2f}" if label is not None else json.dumps(out)[:60]
        return (
            f"seq {p['seq']:>6}  {p['model']['name']} {p['model']['version']}  {p['stream']}  "
            f"{what}   invoke {p['latency_ms']:.3f} ms"
        )
    except (ValueError, KeyError, TypeError):
        return f"{topic}  {payload[:120]!r}"


def run_demo(seconds: float = 0, count: int = 0, broker: str = "auto") -> int:
    """Run the agent on the demo model against a local broker, printing what it publishes."""
    from agent.app.service import Agent

    setup_logging("warning")
    with (
        tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp,
        demo_broker(Path(tmp), broker) as (port, protocol, what),
    ):
        env = {
            "EDGE_AGENT__MQTT__HOST": "127.0.0.1",
            "EDGE_AGENT__MQTT__PORT": str(port),
            "EDGE_AGENT__MQTT__PROTOCOL": f'"{protocol}"',
            "EDGE_AGENT__AGENT__STATE_DIR": f'"{Path(tmp) / "state"}"',
        }
        cfg = load_config(None, env)
        print(f"edge-agent demo: broker = {what}; model = {cfg.model.path}; Ctrl-C to stop")
        seen = [0]
        done = threading.Event()

        def show(topic: str, payload: bytes) -> None:
            print(_line(topic, payload), flush=True)
            if "/prediction/" in topic:
                seen[0] += 1
                if count and seen[0] >= count:
                    done.set()

        viewer = MqttLink(cfg.mqtt, "demo-viewer")
        viewer.subscribe(f"{cfg.mqtt.topic_prefix}/#", 1, show)
        viewer.start()
        agent = Agent(cfg)
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        agent.install_signal_handlers()
        running = agent.build(cfg)
        agent.start(running)
        try:
            deadline = time.monotonic() + seconds if seconds else None
            while not done.is_set() and not agent.stop_requested:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                done.wait(0.2)
        finally:
            agent.shutdown(running, final_status=True)
            viewer.stop()
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        print(f"edge-agent demo: {seen[0]} prediction(s) received")
    return 0
