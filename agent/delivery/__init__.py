"""Where predictions leave: sequence numbers, the store-and-forward spool, MQTT.

publisher.py  seq numbers, spooling, publishing in order within the in-flight window, acks
spool.py      the SQLite (WAL) queue: committed before publishing, deleted on PUBACK
mqtt/         the only package importing paho: the self-reconnecting ``MqttLink`` and the
              one-shot helpers (``publish_once``, ``collect_retained``)
"""

__all__ = ["mqtt", "publisher", "spool"]
