"""``edge-fleet``: the operator's view of a fleet and its model rollouts, over MQTT only.

    view.py        what every device reports (retained status/OTA state, the metrics stream)
    rollout.py     announce a version to a channel, follow it, abort on failures; promote
    simulator.py   thousands of simulated devices in one process (``edge-fleet simulate``)
    shadowgate.py  promotion gated on shadow reports; devices over the drift threshold
    connection.py  broker options of the command line -> ``agent.config.MqttSection``
    cli.py         the ``edge-fleet`` command (status, rollout, promote, drift, simulate, serve)

Everything goes through ``agent.delivery.mqtt`` (``MqttLink``, ``collect_retained``,
``publish_once``); the simulator through ``agent.delivery.mqtt.Swarm``.
"""
