"""The threads that wire ingest, model and delivery together.

threads.py   ``Pipeline``: source threads, the inference thread, hot swap (``build_stages``)
ondemand.py  one-off predictions for the HTTP API, on an interpreter of its own
drift.py     drift monitoring: the package's reference against the recent windows
shadow.py    a candidate model run beside the active one on the same windows, never publishing
"""

__all__ = ["drift", "ondemand", "shadow", "threads"]
