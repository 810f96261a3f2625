"""The health window: error rate, NaN outputs, latency, and the boot counter's verdict."""

from __future__ import annotations

from agent.config import OtaSection
from agent.metrics import Metrics
from agent.ota.health import MIN_EVENTS, MIN_PROBES, PROBE_EVERY_S, HealthWatch, boot_verdict

SETTINGS = OtaSection(health_window_s=10.0, max_error_rate=0.05, max_latency_factor=3.0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def watch(metrics: Metrics, clock: Clock, **kw: object) -> HealthWatch:
    args: dict[str, object] = {"baseline_latency_s": None, "probe": None}
    args.update(kw)
    return HealthWatch(metrics, SETTINGS, clock=clock, **args)  # type: ignore[arg-type]


def test_a_healthy_model_passes_at_the_end_of_the_window() -> None:
    m, clock = Metrics(), Clock()
    m.inc("predictions_out", 1000)  # before activation: not counted
    m.inc("inference_errors", 50, reason="non_finite")
    w = watch(m, clock)
    m.inc("predictions_out", 200)
    m.inc("inference_errors", 2, reason="error")  # 1%: under the 5% limit
    clock.t += 5
    assert w.check().status == "watching"
    clock.t += 5
    v = w.check()
    assert v.status == "passed" and "202 windows" in (v.detail or "")


def test_nan_outputs_fail_early() -> None:
    m, clock = Metrics(), Clock()
    w = watch(m, clock)
    m.inc("inference_errors", MIN_EVENTS - 1, reason="non_finite")
    assert w.check().status == "watching"  # not enough evidence yet
    m.inc("inference_errors", 1, reason="non_finite")
    v = w.check()
    assert (v.status, v.reason) == ("failed", "non_finite")


def test_other_errors_fail_as_error_rate() -> None:
    m, clock = Metrics(), Clock()
    w = watch(m, clock)
    m.inc("predictions_out", 90)
    m.inc("inference_errors", 10, reason="error")
    v = w.check()
    assert (v.status, v.reason) == ("failed", "error_rate")


def test_few_windows_are_judged_at_the_end() -> None:
    m, clock = Metrics(), Clock()
    w = watch(m, clock)
    m.inc("predictions_out", 3)
    m.inc("inference_errors", 1, reason="non_finite")
    assert w.check().status == "watching"
    clock.t += 10
    assert w.check().reason == "non_finite"


def test_latency_far_above_the_previous_model_fails() -> None:
    m, clock = Metrics(), Clock()
    calls: list[float] = []

    def probe() -> float:
        calls.append(clock.t)
        return 0.010

    w = watch(m, clock, baseline_latency_s=0.001, probe=probe)
    for _ in range(MIN_PROBES - 1):
        assert w.check().status == "watching"
        assert w.check().status == "watching"  # checks between probes do not call the model
        clock.t += PROBE_EVERY_S
    v = w.check()
    assert len(calls) == MIN_PROBES
    assert (v.status, v.reason) == ("failed", "latency")


def test_latency_a_little_above_is_fine() -> None:
    m, clock = Metrics(), Clock()
    # 5x slower but only 0.4 ms more: under the absolute slack, scheduler noise territory
    w = watch(m, clock, baseline_latency_s=0.0001, probe=lambda: 0.0005)
    for _ in range(MIN_PROBES + 2):
        assert w.check().status == "watching"
        clock.t += PROBE_EVERY_S
    clock.t += 10
    assert w.check().status == "passed"


def test_a_pipeline_counter_of_windows_is_preferred() -> None:
    m, clock = Metrics(), Clock()
    w = watch(m, clock)
    m.inc("windows_run", 400)  # publish-on-change: few predictions for many windows
    m.inc("predictions_out", 10)
    m.inc("inference_errors", 5, reason="error")
    clock.t += 10
    assert w.check().status == "passed"  # 5 of 400, not 5 of 15


def test_boot_verdict() -> None:
    s = OtaSection(max_boot_failures=3)
    assert [boot_verdict(n, s) for n in (1, 2, 3, 4)] == [False, False, True, True]
