"""The threads that wire ingest, model and delivery together.

threads.py   ``Pipeline``: source threads, the inference thread, hot swap (``build_stages``)
ondemand.py  one-off predictions for the HTTP API, on an interpreter of its own
streams.py   ``PerStream``: a stateful model's interpreter per stream (capped, memory-checked)
offline.py   ``edge-agent predict --stream``: a recording through the agent's own windowing
drift.py     drift monitoring: the package's reference against the recent windows
shadow.py    a candidate model run beside the active one on the same windows, never publishing
"""

__all__ = ["drift", "offline", "ondemand", "shadow", "streams", "threads"]
