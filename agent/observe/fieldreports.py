"""Publishes what the field check finds: the drift alert and the shadow report.

- the drift alert (``DriftAlertV1``), retained on ``<prefix>/<device>/drift``, as soon as the
  pipeline's drift monitor raises or clears it (its callback only sets an event: it runs on the
  inference thread) and again after each reconnect;
- the shadow report (``ShadowReportV1``), retained on ``<prefix>/<device>/shadow/<model>``, every
  ``metrics.interval_s`` (at least every 60 s when metrics are off) while a shadow runs; at
  the same interval the shadow's running counts are saved (``ShadowRunner.save``), connected
  or not.
"""

from __future__ import annotations

import logging
import threading
import time

from agent.delivery.mqtt import OutgoingMessage
from agent.observe.telemetry import ReporterLink
from agent.observe.view import Running
from agent.wire.fieldcheck import DriftAlertV1

log = logging.getLogger(__name__)


class FieldReporter:
    """Publishes the drift alert and the shadow report (a thread of its own)."""

    def __init__(self, r: Running) -> None:
        self._r = r
        self._link: ReporterLink = r.link
        self._interval = r.cfg.metrics.interval_s or 60.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._alert: DriftAlertV1 | None = None
        self._alert_sent = True
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="field-reports", daemon=True)
        r.pipeline.on_drift = self._drift_changed
        self._link.add_connect_listener(self._reconnected)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _drift_changed(self, alert: DriftAlertV1) -> None:
        with self._lock:
            self._alert, self._alert_sent = alert, False
        self._wake.set()

    def _reconnected(self) -> None:
        with self._lock:
            self._alert_sent = self._alert is None
        self._wake.set()

    def publish_shadow(self) -> bool:
        r = self._r
        shadow = r.pipeline.shadow
        if shadow is None:
            return False
        msg = shadow.report(r.cfg.agent.device_id, r.pipeline.active)
        topic = r.topics.shadow(shadow.candidate.name)
        return self._link.publish(
            OutgoingMessage(topic, msg.model_dump_json().encode(), qos=1, retain=True)
        )

    def _publish_alert(self) -> None:
        with self._lock:
            alert, sent = self._alert, self._alert_sent
        if alert is None or sent or not self._link.connected:
            return
        payload = alert.model_dump_json().encode()
        if self._link.publish(OutgoingMessage(self._r.topics.drift, payload, qos=1, retain=True)):
            with self._lock:
                if self._alert is alert:
                    self._alert_sent = True

    def _run(self) -> None:
        next_at = time.monotonic() + self._interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._publish_alert()
                if time.monotonic() >= next_at:
                    next_at = time.monotonic() + self._interval
                    shadow = self._r.pipeline.shadow
                    if shadow is not None:
                        shadow.save()  # its counts survive a restart (once per interval)
                    if self._link.connected:
                        self.publish_shadow()
            except Exception:  # a bug here must not end the reports
                log.exception("field reports failed")
