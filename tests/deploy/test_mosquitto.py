"""deploy/mosquitto: the example broker config, run by a real Mosquitto, does what it says.

Certificates come from deploy/mosquitto/make-certs.sh (openssl) and passwords from
mosquitto_passwd, as in the README. The config is used as shipped, with only its paths and the
port rewritten. Clients speak MQTT 5, so a refused publish comes back as a PUBACK reason code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.broker import free_port, mosquitto_binary, wait_for_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
PASSWORDS = {"operator": "op-pw", "dev-a": "a-pw", "dev-b": "b-pw"}
NOT_AUTHORIZED = 135
ACCEPTED = {0, 16}  # success, and "no matching subscribers" (also a success)


@dataclass
class FleetBroker:
    port: int
    ca_file: Path
    log: Path
    proc: subprocess.Popen[bytes]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(f"/usr/bin/{name}")
    if found is None:
        pytest.fail(f"{name} is not installed (the test command must apt-get install it)")
    return found


def render_conf(workdir: Path, port: int) -> Path:
    text = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in [
        ("/etc/mosquitto/certs/", f"{workdir}/pki/"),
        ("/etc/mosquitto/edge-agent.passwd", f"{workdir}/passwd"),
        ("/etc/mosquitto/edge-agent.acl", f"{workdir}/acl"),
        ("listener 8883\n", f"listener {port} 127.0.0.1\n"),
    ]:
        assert old in text, f"mosquitto.conf no longer mentions {old!r}: update this test"
        text = text.replace(old, new)
    text += f"\npersistence false\nlog_dest file {workdir}/mosquitto.log\nlog_type all\n"
    if os.geteuid() == 0:
        # As root Mosquitto switches to the `mosquitto` user before reading the password file
        # and keys, which it cannot do in a private test directory. On a broker the files are
        # group mosquitto (see the README); here we keep root.
        text += "user root\n"
    conf = workdir / "mosquitto.conf"
    conf.write_text(text)
    return conf


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Iterator[FleetBroker]:
    pki = tmp_path / "pki"
    make_certs = ["/bin/sh", str(DEPLOY / "make-certs.sh")]
    tool("openssl")
    subprocess.run([*make_certs, "ca", str(pki)], check=True, capture_output=True)
    subprocess.run(
        [*make_certs, "broker", str(pki), "localhost", "127.0.0.1"], check=True, capture_output=True
    )
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, password in PASSWORDS.items():
        subprocess.run(
            [tool("mosquitto_passwd"), "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    shutil.copy(DEPLOY / "acl", tmp_path / "acl")
    port = free_port()
    conf = render_conf(tmp_path, port)
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port)
        yield FleetBroker(port, pki / "edge-ca.crt", tmp_path / "mosquitto.log", proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Client:
    """A paho MQTT 5 client over TLS that records CONNACK, PUBACK reason codes and messages."""

    broker: FleetBroker
    username: str | None
    password: str | None = None
    client_id: str = ""
    connack: ReasonCode | None = None
    acks: dict[int, int] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: mqtt.Client | None = None

    def connect(self, *, tls: bool = True) -> int:
        """Connect; the CONNACK reason code (0 = accepted), or -1 when the connection failed."""
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if tls:
            c.tls_set(ca_certs=str(self.broker.ca_file))
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        self._client = c
        try:
            c.connect("localhost", self.broker.port, keepalive=10)
        except OSError:
            return -1
        c.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self.connack is not None, 10), "no CONNACK"
        assert self.connack is not None
        return int(self.connack.value)

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_disconnect(
        self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object
    ) -> None:
        with self._cond:
            if self.connack is None:
                self.connack = rc  # refused with a TLS or protocol error before any CONNACK
            self._cond.notify_all()

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        with self._cond:
            self.acks[mid] = int(rc.value)
            self._cond.notify_all()

    def _on_subscribe(
        self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: Properties | None
    ) -> None:
        with self._cond:
            self.acks[mid] = max(int(rc.value) for rc in rcs)
            self._cond.notify_all()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _wait_ack(self, mid: int) -> int:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.acks, 10), f"no ack for mid {mid}"
            return self.acks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK reason code (see ACCEPTED, NOT_AUTHORIZED)."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return self._wait_ack(info.mid)

    def subscribe(self, topic: str) -> int:
        assert self._client is not None
        _rc, mid = self._client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait_ack(mid)

    def wait_message(self, topic: str) -> list[tuple[str, bytes]]:
        """Every message up to and including the first on ``topic``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(t == topic for t, _ in self.messages), 10)
            assert ok, f"nothing on {topic}; got {self.messages}"
            idx = next(i for i, (t, _) in enumerate(self.messages) if t == topic)
            return self.messages[: idx + 1]

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


@pytest.fixture
def clients(fleet_broker: FleetBroker) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def client(
    broker: FleetBroker, made: list[Client], user: str | None, client_id: str = ""
) -> Client:
    c = Client(broker, user, PASSWORDS.get(user or "", "wrong"), client_id)
    made.append(c)
    return c


def test_only_the_tls_listener_is_opened(fleet_broker: FleetBroker, clients: list[Client]) -> None:
    assert client(fleet_broker, clients, "operator").connect() == 0  # the log is written by now
    log = fleet_broker.log.read_text()
    opened = [line for line in log.splitlines() if "listen socket on port" in line]
    assert opened and all(line.endswith(f"port {fleet_broker.port}.") for line in opened), opened


def test_who_may_connect(fleet_broker: FleetBroker, clients: list[Client]) -> None:
    refused = {134, 135}  # bad user name or password / not authorized
    assert client(fleet_broker, clients, None).connect() in refused  # anonymous
    wrong = Client(fleet_broker, "dev-a", "not-the-password")
    clients.append(wrong)
    assert wrong.connect() in refused
    plaintext = client(fleet_broker, clients, "dev-a")
    assert plaintext.connect(tls=False) != 0  # the port speaks TLS only
    assert client(fleet_broker, clients, "dev-a").connect() == 0


def test_devices_publish_only_under_their_own_id(
    fleet_broker: FleetBroker, clients: list[Client]
) -> None:
    op = client(fleet_broker, clients, "operator")
    assert op.connect() == 0
    assert op.subscribe("edge/#") == 1  # granted QoS 1
    dev = client(fleet_broker, clients, "dev-a")
    assert dev.connect() == 0

    assert dev.publish("edge/dev-b/predictions", b"forged") == NOT_AUTHORIZED
    assert dev.publish("edge/ota/stable/demo", b"forged") == NOT_AUTHORIZED
    assert dev.publish("elsewhere/x", b"forged") == NOT_AUTHORIZED
    assert dev.publish("edge/dev-a/predictions", b"ok") == 0
    # Messages from one client arrive in order: anything forged would have come first.
    assert op.wait_message("edge/dev-a/predictions") == [("edge/dev-a/predictions", b"ok")]


def test_a_device_cannot_borrow_another_client_id(
    fleet_broker: FleetBroker, clients: list[Client]
) -> None:
    """use_username_as_clientid: claiming dev-b's client id does not give dev-b's topics."""
    dev = client(fleet_broker, clients, "dev-a", client_id="dev-b")
    assert dev.connect() == 0
    assert dev.publish("edge/dev-b/status", b"forged") == NOT_AUTHORIZED
    assert dev.publish("edge/dev-a/status", b"online") in ACCEPTED


def test_devices_read_ota_and_their_own_commands_only(
    fleet_broker: FleetBroker, clients: list[Client]
) -> None:
    op = client(fleet_broker, clients, "operator")
    assert op.connect() == 0
    assert op.publish("edge/ota/stable/demo", b"announcement", retain=True) in ACCEPTED

    dev = client(fleet_broker, clients, "dev-a")
    assert dev.connect() == 0
    dev.subscribe("edge/ota/#")
    dev.subscribe("edge/dev-a/#")
    dev.subscribe("edge/dev-b/#")  # may be granted, but nothing of dev-b's is delivered
    assert dev.wait_message("edge/ota/stable/demo") == [("edge/ota/stable/demo", b"announcement")]

    assert op.publish("edge/dev-b/set", b"for b") in ACCEPTED
    assert op.publish("edge/dev-a/set", b"for a") in ACCEPTED
    got = dev.wait_message("edge/dev-a/set")
    assert ("edge/dev-b/set", b"for b") not in got
