"""Target 7: store-and-forward. Enqueue cost with the broker down, then the drain.

In process, the agent's real delivery path: ``Publisher`` + ``Spool`` (SQLite file) +
``MqttLink`` against a real Mosquitto. Inference is replaced by prediction records made in
advance (their making is inference's cost, not the queue's); they are handed over in groups
of 64, as the pipeline does.

1. A persistent QoS 1 subscriber session is opened, then the broker is stopped (it saves the
   session). The link is started and keeps failing to connect; ``BACKLOG`` predictions are
   submitted as fast as possible. Enqueue cost = wall time until all are committed to the
   spool, per prediction (and the process CPU per prediction).
2. The broker is started again. While the link reconnects and drains the backlog, new
   predictions keep coming at 200/s. Drain rate = backlog / (time of the last backlog
   acknowledgement - time the link was connected). The subscriber (its session kept the
   messages the broker accepted while it was away) checks every sequence number arrived, in
   order, backlog first.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.config import MqttSection
from agent.delivery.mqtt import MqttLink
from agent.delivery.publisher import PredictionRecord, Publisher
from agent.delivery.spool import Spool
from agent.metrics import Metrics
from bench.context import Context
from bench.report import Row
from bench.subscriber import Subscriber
from tests.broker import Broker

GROUP = 64
LIVE_RATE = 200.0


def _records(n: int, start: int = 0) -> list[PredictionRecord]:
    now = time.time()
    return [
        PredictionRecord(
            topic="edge/fwd/prediction/tiny",
            model_name="tiny",
            model_version="1.0.0",
            stream="s",
            ts=now + (start + i) * 0.005,
            outputs={"label": "class_1", "score": 0.996094},
            latency_ms=0.0123,
            t_in=time.perf_counter(),
        )
        for i in range(n)
    ]


def _wait(cond: object, timeout: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"store-and-forward: {what} within {timeout:.0f}s")
        time.sleep(0.005)  # watching counters of other threads: nothing to await


def run(ctx: Context) -> list[Row]:
    backlog = 2_000 if ctx.smoke else 100_000
    live = 100 if ctx.smoke else 1_000
    workdir = ctx.workdir / ctx.run_id("forward")
    broker = Broker(workdir / "broker", persistent=True)
    broker.start()
    topic = "edge/fwd/prediction/#"
    session = f"bench-fwd-{id(workdir):x}"
    with Subscriber(broker.host, broker.port, topic, session=session):
        pass  # the session and its subscription now exist
    broker.stop(graceful=True)  # saves the session

    settings = MqttSection(
        host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=0.5
    )
    link = MqttLink(settings, "fwd")
    spool = Spool(workdir / "spool.db")
    pub = Publisher(link, spool, "fwd", 1, Metrics())
    records = _records(backlog)
    groups = [records[i : i + GROUP] for i in range(0, backlog, GROUP)]
    try:
        link.start()
        pub.start()
        # ---- 1. broker down: enqueue
        c0, t0 = time.process_time(), time.perf_counter()
        for g in groups:
            pub.submit_many(g)
        _wait(lambda: spool.depth >= backlog, 120, f"{backlog} predictions not spooled")
        t1, c1 = time.perf_counter(), time.process_time()
        enqueue_us = (t1 - t0) / backlog * 1e6
        enqueue_cpu_us = (c1 - c0) / backlog * 1e6
        del records, groups
        # ---- 2. broker back: drain while new predictions flow
        broker.start()
        with Subscriber(broker.host, broker.port, topic, session=session) as sub:
            stop = threading.Event()
            feeder = threading.Thread(target=_feed, args=(pub, backlog, live, stop))
            feeder.start()
            _wait(lambda: link.connected, 30, "the link did not reconnect")
            t_conn = time.perf_counter()
            _wait(lambda: pub.delivered >= backlog, 300, "the backlog was not drained")
            t_drained = time.perf_counter()
            feeder.join()
            _wait(lambda: sub.predictions >= backlog + live, 60, "not everything arrived")
            seqs = list(sub.data.seqs)
            stop.set()
    finally:
        pub.stop(5)
        link.stop()
        spool.close()
        broker.stop()
    drain = backlog / (t_drained - t_conn)
    first: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first.append(s)
    complete = first == list(range(backlog + live))
    dups = len(seqs) - len(first)
    note_q = (
        f"{backlog:,} predictions; CPU {enqueue_cpu_us:.1f} µs/prediction; spool file "
        f"{_size_mb(workdir / 'spool.db'):.1f} MB"
    )
    note_d = (
        f"{backlog:,} backlog + {live} new at {LIVE_RATE:.0f}/s during the drain: "
        f"{'all arrived in order' if complete else 'MISSING OR OUT OF ORDER'}"
        f"{f', {dups} duplicate(s)' if dups else ''}"
    )
    return [
        Row(
            "8 enqueue, broker down",
            "µs/pred",
            enqueue_us,
            {},
            None,
            "<= 50 µs",
            enqueue_us <= 50,
            note_q,
        ),
        Row(
            "8 drain after reconnect",
            "pred/s",
            drain,
            {},
            None,
            ">= 5,000/s, in order",
            drain >= 5000 and complete,
            note_d,
        ),
    ]


def _feed(pub: Publisher, start: int, n: int, stop: threading.Event) -> None:
    """New predictions at LIVE_RATE, in groups as the pipeline hands them over."""
    t0 = time.monotonic()
    for i, rec in enumerate(_records(n, start)):
        if stop.wait(max(0.0, t0 + i / LIVE_RATE - time.monotonic())):
            return
        pub.submit(rec)


def _size_mb(path: Path) -> float:
    total = 0
    for p in path.parent.glob(path.name + "*"):
        total += p.stat().st_size
    return total / 2**20
