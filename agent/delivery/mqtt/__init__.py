"""The MQTT seam: the only package that imports paho.

messages.py  ``OutgoingMessage``, the ``Message`` protocol, callback types
client.py    paho's client as we use it: buffered socket, bursts, TLS, construction
link.py      ``MqttLink``: the agent's self-reconnecting connection (birth after SUBACK)
oneshot.py   ``publish_once``, ``collect_retained``, ``probe_broker`` for the tools
swarm.py     ``Swarm``: thousands of clients on one selector thread (the fleet simulator)
"""

from agent.delivery.mqtt.client import tls_problems
from agent.delivery.mqtt.link import MqttLink
from agent.delivery.mqtt.messages import (
    AckCallback,
    Listener,
    Message,
    MessageHandler,
    OutgoingMessage,
)
from agent.delivery.mqtt.oneshot import ProbeStep, collect_retained, probe_broker, publish_once
from agent.delivery.mqtt.swarm import Swarm, SwarmClient, Will, raise_fd_limit

__all__ = [
    "AckCallback",
    "Listener",
    "Message",
    "MessageHandler",
    "MqttLink",
    "OutgoingMessage",
    "ProbeStep",
    "Swarm",
    "SwarmClient",
    "Will",
    "collect_retained",
    "probe_broker",
    "publish_once",
    "raise_fd_limit",
    "tls_problems",
]
