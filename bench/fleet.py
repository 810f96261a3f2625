"""Fleet operations at scale: 1,000 and 10,000 simulated devices on one Mosquitto.

For each size, on a broker of its own (``sys_interval 1`` for its ``$SYS`` figures; the
test broker's unlimited per-client queues):

1. ``edge-fleet simulate`` (one process) brings the devices up: status with last will,
   retained metrics every 30 s and OTA state, 0.05 predictions/s each; 2 % of them refuse
   any new offer (``version_reused``);
2. ``edge-fleet status --json``: wall time to a complete view (every device, every online
   device with metrics), its peak RSS and CPU seconds (``wait4``);
3. ``edge-fleet rollout --from-channel staging --channel canary --percent 10
   --max-failure-fraction 0.01``: the time from announcing to the abort, how many devices had
   finished by then, and whether the channel's retained announcement is the previous one
   again;
4. the broker's RSS, CPU and retained-message count (``$SYS/broker/retained messages/count``),
   the simulator's RSS and CPU.

Then 10,000 again on a broker with Mosquitto's default per-client queues
(``max_queued_messages 1000``, ``max_inflight_messages 20``): the first limit met.

Mosquitto needs one descriptor per client: the open-file limit of this process (inherited by
the broker and the simulator) is raised first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import uuid

from agent.config import MqttSection
from agent.delivery.mqtt import OutgoingMessage, collect_retained, publish_once, raise_fd_limit
from agent.fleet.rollout import manifest_build
from bench.context import Context
from bench.procs import PYTHON, REPO, cpu_seconds, rss_mb
from bench.report import Row
from tests.broker import Broker
from tests.fleet.support import make_announcement

INITIAL_SHA = hashlib.sha256(b"TFL3-not-a-model").hexdigest()  # make_manifest's content
REFUSING = 0.02
CANARY_PERCENT = 10.0
ABORT_FRACTION = 0.01


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _timed(args: list[str], timeout: float) -> tuple[float, float, float, list[tuple[float, str]]]:
    """Run a command: (wall s, CPU s, peak RSS MiB, [(t since start, stdout line)])."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if wall > timeout:
        raise RuntimeError(f"{args[3:5]} took {wall:.0f} s (> {timeout})")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, lines


def _retained_count(settings: MqttSection) -> int | None:
    topic = "$SYS/broker/retained messages/count"
    got = collect_retained(settings, f"bench-sys-{uuid.uuid4().hex[:6]}", [topic])
    value = got.get(topic)
    return int(value) if value else None


def _announced_version(settings: MqttSection, topic: str) -> str | None:
    from agent.release.manifest import Announcement

    got = collect_retained(settings, f"bench-peek-{uuid.uuid4().hex[:6]}", [topic]).get(topic)
    return None if not got else manifest_build(Announcement.model_validate_json(got))[1]


MOSQUITTO_DEFAULTS = "max_queued_messages 1000\nmax_inflight_messages 20\n"
"""Mosquitto's own defaults for the per-client queues (the test broker lifts both limits)."""


def one_size(ctx: Context, n: int, defaults: bool = False) -> list[Row]:
    extra = "sys_interval 1\n" + (MOSQUITTO_DEFAULTS if defaults else "")
    broker = Broker(ctx.workdir / f"fleet-{n}{'-defaults' if defaults else ''}", extra_conf=extra)
    label = f"fleet {n}" + (" (Mosquitto default queues)" if defaults else "")
    broker.start()
    settings = MqttSection(host=broker.host, port=broker.port)
    bargs = ["--host", broker.host, "--port", str(broker.port)]
    canary = "edge/ota/canary/demo"
    previous = make_announcement("demo", "1.0.0", "canary")
    publish_once(settings, "bench-seed", [OutgoingMessage(canary, previous.to_bytes(), 1, True)])
    staged = make_announcement("demo", "1.1.0", "staging")
    publish_once(
        settings,
        "bench-seed",
        [OutgoingMessage("edge/ota/staging/demo", staged.to_bytes(), 1, True)],
    )
    t0 = time.monotonic()
    sim = subprocess.Popen(
        [
            PYTHON, "-m", "agent.fleet.cli", "simulate", *bargs,
            "--devices", str(n), "--sha256", INITIAL_SHA,
            "--metrics-interval", "30", "--prediction-rate", "0.05",
            "--install-time", "1", "--health-window", "5",
            "--behave", f"refuse:version_reused={REFUSING}", "--connect-rate", "1000",
        ],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rows: list[Row] = []
    try:
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        up = time.monotonic() - t0
        if ready.get("ready") != n:
            raise RuntimeError(f"simulator: {ready}")
        # steady state: every device's three retained messages are in the broker
        deadline = time.monotonic() + 120
        retained = _retained_count(settings) or 0
        while retained < 3 * n and time.monotonic() < deadline:
            time.sleep(1.0)  # $SYS is published once a second: nothing finer to wait on
            retained = _retained_count(settings) or 0
        c0 = (cpu_seconds(sim.pid), cpu_seconds(broker.proc.pid), time.monotonic())  # type: ignore[union-attr]
        time.sleep(10.0 if not ctx.smoke else 2.0)  # a window to average CPU over
        c1 = (cpu_seconds(sim.pid), cpu_seconds(broker.proc.pid), time.monotonic())  # type: ignore[union-attr]
        span = c1[2] - c0[2]
        sim_cpu, broker_cpu = (c1[0] - c0[0]) / span, (c1[1] - c0[1]) / span
        sim_rss, broker_rss = rss_mb(sim.pid), rss_mb(broker.proc.pid)  # type: ignore[union-attr]
        rows.append(
            Row(
                f"{label}: simulator up",
                "s",
                up,
                info=True,
                note=f"{n} MQTT clients in one process: RSS {sim_rss:.0f} MiB, "
                f"{sim_cpu:.0%} of a core at steady state",
            )
        )
        rows.append(
            Row(
                f"{label}: broker",
                "MiB",
                broker_rss,
                info=True,
                note=f"Mosquitto RSS with {n} clients; {retained} retained messages; "
                f"{broker_cpu:.0%} of a core at steady state",
            )
        )

        # status: a complete view
        wall, cpu, rss, lines = _timed(
            [PYTHON, "-m", "agent.fleet.cli", "status", *bargs, "--json", "--wait", "120"], 180
        )
        text = "\n".join(line for _, line in lines)
        try:
            out = json.loads(text)
        except ValueError:  # the tool failed (its reason is on stderr): a failed row
            complete = False
            note = "edge-fleet status --json gave no view (its error is in the run's output)"
        else:
            s = out["summary"]
            complete = (
                s["devices"] == n
                and s["online"] == n
                and all(d["prediction_rate"] is not None for d in out["devices"])
            )
            note = (
                f"edge-fleet status --json: peak RSS {rss:.0f} MiB, {cpu:.1f} CPU s; "
                f"{s['devices']} devices, {s['online']} online"
            )
        rows.append(
            Row(
                f"{label}: status complete view",
                "s",
                wall,
                goal="complete (every device, with metrics)",
                passed=complete,
                note=note,
            )
        )

        # a canary to 10 % with 2 % refusing: abort above 1 %, previous restored
        wall, cpu, rss, lines = _timed(
            [
                PYTHON, "-m", "agent.fleet.cli", "rollout", *bargs,
                "--model", "demo", "--from-channel", "staging", "--channel", "canary",
                "--percent", str(CANARY_PERCENT),
                "--max-failure-fraction", str(ABORT_FRACTION),
                "--discover", "120", "--timeout", "600",
                "--state-dir", str(ctx.workdir / f"rollouts-{n}"),
            ],
            900,
        )  # fmt: skip
        t_ann = next((t for t, line in lines if line.startswith("announced")), float("nan"))
        t_abort = next((t for t, line in lines if line.startswith("ABORTED")), float("nan"))
        last = lines[-1][1] if lines else ""
        m = re.match(
            r"(\w+): (\d+) succeeded.*?, (\d+) failed.*?, (\d+) pending of (\d+) targeted", last
        )
        now = _announced_version(settings, canary)
        aborted = last.startswith("aborted") and now == "1.0.0"
        counts = "?" if m is None else (
            f"{m.group(5)} targeted, {m.group(3)} failed, {m.group(2)} succeeded, "
            f"{m.group(4)} pending at the abort"
        )  # fmt: skip
        rows.append(
            Row(
                f"{label}: canary {CANARY_PERCENT:g}% abort",
                "s",
                t_abort - t_ann,
                goal=f"aborts (> {ABORT_FRACTION:.0%} failed), previous re-announced",
                passed=aborted,
                note=f"announce to abort; {counts}; channel now offers {now}; discovery "
                f"{t_ann:.1f} s; rollout process peak RSS {rss:.0f} MiB, {cpu:.1f} CPU s; "
                f"last line: {last[:160]}",
            )
        )
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(60)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        broker.stop()
    return rows


def run(ctx: Context) -> list[Row]:
    sizes = [200] if ctx.smoke else [1000, 10000]
    raise_fd_limit(2 * max(sizes) + 1024)
    rows: list[Row] = []
    for n in sizes:
        rows += one_size(ctx, n)
    if not ctx.smoke:
        # the first limit: a broker left at its default per-client queue of 1000 messages
        rows += one_size(ctx, max(sizes), defaults=True)
    return rows
