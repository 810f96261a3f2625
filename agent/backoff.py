"""Capped exponential backoff with equal jitter: one helper for every retry loop.

MQTT reconnects, restarts of a command source's program and download retries all wait
``backoff_delay(attempt, minimum, maximum)``: the base doubles from ``minimum`` with each
attempt up to ``maximum``, and the delay is drawn uniformly from ``[base/2, base]`` ("equal
jitter"), never below ``minimum``. Half the base is kept as a floor on purpose: a fleet that
lost its broker spreads its reconnects without any device retrying sooner than half its base.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """The wait before retry number ``attempt + 1`` (``attempt`` 0 is the first retry)."""
    base = min(maximum, minimum * 2.0 ** min(attempt, 32))
    return max(minimum, base * rng.uniform(0.5, 1.0))


class Backoff:
    """``backoff_delay`` with the attempt count kept: ``next_delay()`` after each failure,
    ``reset()`` after a success."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto

    def next_delay(self) -> float:
        delay = backoff_delay(self._attempt, self.minimum, self.maximum, self._rng)
        self._attempt = min(self._attempt + 1, 32)
        return delay

    def reset(self) -> None:
        self._attempt = 0
