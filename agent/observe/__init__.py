"""Where health is reported: the one definition of healthy, metrics, HTTP API, Home Assistant.

    view.py           ``liveness`` (healthy), status and the metrics snapshot of a running agent
    telemetry.py      the periodic metrics message, process facts, Prometheus text
    httpapi.py        the local HTTP API (/healthz, /status, /metrics, /drift, /predict)
    homeassistant.py  MQTT discovery
    fieldreports.py   the retained drift alert and shadow report
    wiring.py         starts and stops them with each running configuration

The HTTP API and discovery are imported only when enabled (device RSS).
"""

__all__ = ["fieldreports", "homeassistant", "httpapi", "telemetry", "view", "wiring"]
