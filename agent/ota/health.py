"""Watching a newly activated model, and counting starts that did not survive it.

``HealthWatch`` runs for ``ota.health_window_s`` after a swap. It reads the shared ``Metrics``
counters as deltas from the moment of activation and fails the model when:

- ``non_finite`` / ``error_rate``: inference errors (``inference_errors``, reason
  ``non_finite`` for NaN/Inf outputs) exceed ``ota.max_error_rate`` of the windows run
  (errors + ``predictions_out``). Judged early once ``MIN_EVENTS`` windows ran, and at the end
  of the window on whatever ran;
- ``latency``: the median of timed probe calls on the live model (one per
  ``PROBE_EVERY_S``) is above
  ``ota.max_latency_factor`` x the previous model's (measured the same way before the swap)
  and more than ``LATENCY_SLACK_S`` slower. The pipeline's own ``invoke`` latency window mixes
  the old and the new model, so the watch times the model itself.

The boot counter lives in the persisted state (``Record.boots``): every start of the agent
during a health window increments it, and ``boot_verdict`` says to roll back once it reaches
``ota.max_boot_failures`` — the new model (or the agent with it) keeps crashing.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agent.config import OtaSection
from agent.metrics import Metrics

log = logging.getLogger(__name__)

MIN_EVENTS = 20
MIN_PROBES = 5
PROBE_EVERY_S = 1.0
"""One timed call per second: the probe costs the live model a negligible share of its time."""
LATENCY_SLACK_S = 0.002
CHECK_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Counts:
    """The ``Metrics`` counters the health watch judges a model by."""

    windows: int
    predictions: int
    errors: int
    non_finite: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.windows - other.windows,
            self.predictions - other.predictions,
            self.errors - other.errors,
            self.non_finite - other.non_finite,
        )

    @property
    def events(self) -> int:
        """Windows run: counted by the pipeline if it does, else estimated."""
        return self.windows if self.windows > 0 else self.predictions + self.errors


def read_counts(metrics: Metrics) -> Counts:
    """The current health counters from ``metrics``."""
    errors = metrics.counters_by_reason("inference_errors")
    return Counts(
        windows=metrics.counter("windows_run"),
        predictions=metrics.counter("predictions_out"),
        errors=sum(errors.values()),
        non_finite=errors.get("non_finite", 0),
    )


@dataclass(frozen=True)
class Verdict:
    """The health watch's verdict: watching, passed or failed (with a reason)."""

    status: Literal["watching", "passed", "failed"]
    reason: str | None = None
    detail: str | None = None


class HealthWatch:
    """The health window of one activation. ``check()`` is called every ``CHECK_INTERVAL_S``."""

    def __init__(
        self,
        metrics: Metrics,
        settings: OtaSection,
        *,
        baseline_latency_s: float | None,
        probe: Callable[[], float] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._settings = settings
        self._baseline = baseline_latency_s
        self._probe = probe
        self._clock = clock
        self._start = clock()
        self._base = read_counts(metrics)
        self._latencies: list[float] = []
        self._probed_at = -PROBE_EVERY_S

    @property
    def ends_in(self) -> float:
        return max(0.0, self._settings.health_window_s - (self._clock() - self._start))

    def check(self) -> Verdict:
        s = self._settings
        over = self._clock() - self._start >= s.health_window_s
        c = read_counts(self._metrics) - self._base
        events = max(c.events, c.errors)
        if c.errors and (events >= MIN_EVENTS or over):
            rate = c.errors / events
            if rate > s.max_error_rate:
                reason = "non_finite" if 2 * c.non_finite >= c.errors else "error_rate"
                return Verdict(
                    "failed",
                    reason,
                    f"{c.errors} of {events} windows failed ({rate:.0%}; {c.non_finite} with "
                    f"NaN/Inf outputs), limit {s.max_error_rate:.0%}",
                )
        now = self._clock()
        if (
            self._probe is not None
            and self._baseline is not None
            and now - self._probed_at >= PROBE_EVERY_S
        ):
            self._probed_at = now
            self._latencies.append(self._probe())
            if len(self._latencies) >= MIN_PROBES:
                p50 = statistics.median(self._latencies)
                limit = s.max_latency_factor * self._baseline
                if p50 > limit and p50 - self._baseline > LATENCY_SLACK_S:
                    return Verdict(
                        "failed",
                        "latency",
                        f"median invoke {p50 * 1000:.3f} ms, the previous model "
                        f"{self._baseline * 1000:.3f} ms (limit x{s.max_latency_factor:g})",
                    )
        if over:
            return Verdict(
                "passed",
                detail=f"{events} windows, {c.errors} errors in {s.health_window_s:g}s",
            )
        return Verdict("watching")


def boot_verdict(boots: int, settings: OtaSection) -> bool:
    """True when the starts during one health window say: roll back."""
    return boots >= settings.max_boot_failures
