"""What every benchmark family shares: the broker, the models, and runs of the three programs.

- ``limit(name)``: the bare interpreter loop (``bench.limit``) on a model, run once per model
  and bench run and cached (its invoke time and RSS are references for several rows);
- ``naive(...)``: the naive baseline process (``bench.naive``);
- ``agent(...)``: the real ``edge-agent run`` process with a replay source.

Each run gets its own MQTT topic under ``edge/`` so a late message of one run can never be
counted by the next.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import models
from bench.procs import OUT, PYTHON, REPO
from bench.subscriber import Subscriber
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker


@dataclass
class Limit:
    rate: float
    invoke_us: float
    rss_mb: float
    import_load_s: float


@dataclass
class Context:
    workdir: Path
    smoke: bool
    repeat: int
    soak_minutes: float
    broker: Broker
    paths: dict[str, Path] = field(default_factory=dict)
    _limits: dict[str, Limit] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def spec(self, name: str) -> models.ModelSpec:
        return models.SPECS[name]

    def model(self, name: str) -> Path:
        if name not in self.paths:
            self.paths.update(models.ensure([name]))
        return self.paths[name]

    def run_id(self, what: str) -> str:
        return f"{what}-{next(self._ids)}"

    # ---------------------------------------------------------------- the limit

    def limit(self, name: str, seconds: float | None = None) -> Limit:
        """The bare loop on ``name`` (cached for the rest of the run)."""
        if name not in self._limits:
            secs = seconds or (0.5 if self.smoke else 2.0)
            out = self.run_limit(name, secs)
            self._limits[name] = Limit(
                out["rate"], out["invoke_us_p50"], out["rss_mb"], out["import_load_s"]
            )
        return self._limits[name]

    def run_limit(self, name: str, seconds: float) -> dict[str, Any]:
        proc = subprocess.run(
            [PYTHON, "-m", "bench.limit", str(self.model(name)), "--seconds", str(seconds)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    # ---------------------------------------------------------------- the naive baseline

    def naive_process(
        self, name: str, samples: Path, topic: str, windows: int, rate: float = 0.0
    ) -> subprocess.Popen[str]:
        spec = self.spec(name)
        args = [
            PYTHON,
            "-m",
            "bench.naive",
            str(self.model(name)),
            str(samples),
            "--length",
            str(spec.length),
            "--hop",
            str(spec.hop),
            "--port",
            str(self.broker.port),
            "--topic",
            topic,
            "--windows",
            str(windows),
            "--rate",
            str(rate),
        ]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"naive baseline did not start: {line!r}")
        return proc

    # ---------------------------------------------------------------- the agent

    def agent_config(
        self,
        run: str,
        name: str,
        samples: Path,
        *,
        rate_hz: float | None = None,
        batch: int = 1,
        block_size: int | None = None,
        max_queue: int = 64,
        loop: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """An agent config: replay ``samples`` fast (or at ``rate_hz`` samples/s)."""
        spec = self.spec(name)
        d = self.workdir / run
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        source: dict[str, Any] = {
            "type": "replay",
            "name": "s",
            "path": str(samples),
            "channels": spec.channels,
            "loop": loop,
            "max_queue": max_queue,
            "rate": "fast" if rate_hz is None else "fixed",
            "block_size": block_size or (spec.hop * 64 if rate_hz is None else spec.hop),
        }
        if rate_hz is not None:
            source["rate_hz"] = rate_hz
        cfg: dict[str, Any] = {
            "agent": {"device_id": run, "state_dir": str(d / "state"), "log_level": "warning"},
            "model": {"path": str(self.model(name)), "name": name, "version": "1.0.0"},
            "sources": [source],
            "window": {"length": spec.length, "hop": spec.hop},
            "postprocess": {"type": "classification"},
            "mqtt": {
                "host": self.broker.host,
                "port": self.broker.port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "batch": {"max_predictions": batch},
            },
        }
        for k, v in (extra or {}).items():
            cfg[k] = {**cfg.get(k, {}), **v}
        return write_config(d / "agent.toml", cfg)

    @contextmanager
    def agent(self, config: Path) -> Iterator[AgentProcess]:
        proc = AgentProcess(config, config.parent / "agent.log").start()
        try:
            yield proc
        finally:
            if proc.alive():
                try:
                    proc.terminate(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    @contextmanager
    def subscriber(self, run: str, keep_ts: bool = False) -> Iterator[Subscriber]:
        with Subscriber(
            self.broker.host, self.broker.port, f"edge/{run}/prediction/#", keep_ts=keep_ts
        ) as sub:
            yield sub


def prediction_topic(run: str, name: str) -> str:
    return f"edge/{run}/prediction/{name}"


def wait_or_fail(sub: Subscriber, n: int, timeout: float, what: str, log: Path | None) -> None:
    if not sub.wait_for(n, timeout):
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(
            f"{what}: {sub.predictions} of {n} predictions arrived in {timeout:.0f}s\n{tail}"
        )


def settle(seconds: float) -> None:
    """Let the machine calm down between measured runs (page cache, broker queues)."""
    time.sleep(seconds)


@contextmanager
def standalone(prefix: str, names: list[str]) -> Iterator[Context]:
    """A context of its own for a tool run outside ``python -m bench`` (``bench.accounting``,
    ``bench.threadcpu``): ``names``' models built, a scratch folder, a Mosquitto; all gone
    after."""
    models.ensure(names)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))
    broker = Broker(workdir / "broker")
    broker.start()
    try:
        yield Context(workdir, False, 1, 0.0, broker)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
