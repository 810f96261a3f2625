"""The threads that wire ingest, model and delivery together.

threads.py   ``Pipeline``: source threads, the inference thread, hot swap (``build_stages``)
ondemand.py  one-off predictions for the HTTP API, on an interpreter of its own
"""

__all__ = ["ondemand", "threads"]
