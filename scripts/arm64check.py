"""Host side of scripts/test-arm64: test models, and the MQTT run compared with x86.

    python scripts/arm64check.py models DIR
        Writes the models the arm64 check runs (the built-in demo model and, where TensorFlow
        is installed on the host, a few tests/modelzoo models) with one input file each.
    python scripts/arm64check.py mqtt-run --dir DIR --view VIEW --windows N -- CMD...
        Starts a Mosquitto on a free port, runs the agent on this machine (x86 reference) and
        then ``CMD --config VIEW/agent-arm64.toml`` (the agent in the arm64 root; VIEW is DIR as
        the agent there sees it) on the same replayed recording, and checks that each run
        delivered sequence numbers 0..N-1 with no gap and that every arm64 prediction's
        outputs equal the x86 ones exactly.

Run from the repository root with PYTHONPATH set to it (tests/ is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.agentproc import write_config
from tests.broker import Broker
from tests.mqttclient import Collector

WINDOW, HOP, CHANNELS = 32, 16, 3
DEMO_MODEL = Path(__file__).resolve().parents[1] / "agent" / "model" / "demo" / "model.tflite"


def write_models(out: Path) -> list[str]:
    """Write ``<name>.tflite`` and ``<name>.npy``/``.npz`` pairs; return the names."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    (out / "demo.tflite").write_bytes(DEMO_MODEL.read_bytes())
    np.save(out / "demo.npy", rng.normal(0, 1, (1, WINDOW, CHANNELS)).astype(np.float32))
    names = ["demo"]
    try:
        import tensorflow  # noqa: F401  (only to learn whether the zoo can build)
    except ImportError:
        print("arm64check: no TensorFlow on the host: only the demo model is compared")
        return names
    from tests import modelzoo as zoo

    for zm in (zoo.tiny_classifier("int8"), zoo.tiny_classifier("float32"), zoo.multi_io_model()):
        (out / f"{zm.name}.tflite").write_bytes(zm.content)
        if len(zm.example) == 1:
            np.save(out / f"{zm.name}.npy", zm.example[0])
        else:
            # .npz: one array per input, by the model's input names
            from agent.model.runtime import load_model

            model = load_model(zm.content)
            arrays = {spec.name: x for spec, x in zip(model.inputs, zm.example, strict=True)}
            np.savez(out / f"{zm.name}.npz", **arrays)  # type: ignore[arg-type]
        names.append(zm.name)
    return names


def _signal(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(n) / 50.0
    cols = [np.sin(2 * np.pi * f * t + c * np.pi / 3) for c, f in enumerate([1.0, 0.5, 2.0])]
    x = np.stack(cols, axis=1) + rng.normal(0, 0.1, (n, CHANNELS))
    x[n // 2 : n // 2 + 20] += 3.0
    return x.astype(np.float32)


def _config(view: Path, device: str, broker: Broker) -> dict[str, Any]:
    return {
        "agent": {"device_id": device, "state_dir": str(view / f"state-{device}")},
        "model": {"path": "builtin:demo", "name": "demo", "version": "1.0.0"},
        "sources": [
            {"type": "replay", "name": "rec", "path": str(view / "samples.csv"), "rate": "fast"}
        ],
        "window": {"length": WINDOW, "hop": HOP},
        "postprocess": {"type": "raw"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_max_s": 1.0},
    }


def _run_agent(
    argv: list[str], broker: Broker, device: str, windows: int, log: Path
) -> list[dict[str, Any]]:
    topic = f"edge/{device}/prediction/demo"
    with Collector(broker.host, broker.port, [topic]) as col, log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            msgs = col.wait_for(lambda m: len(m) >= windows or proc.poll() is not None, 600)
            if len(msgs) < windows:  # the agent exited early: give late messages a moment
                msgs = col.wait_for(lambda m: len(m) >= windows, 30)
        except TimeoutError as exc:
            raise SystemExit(f"{device}: {exc}\n{log.read_text(errors='replace')}") from exc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
    if code != 0:
        raise SystemExit(f"{device}: agent exited {code}\n{log.read_text(errors='replace')}")
    return [m.json() for m in msgs]


def mqtt_run(xfer: Path, view: Path, windows: int, cmd: list[str]) -> None:
    x = _signal(WINDOW + HOP * (windows - 1))
    lines = ["a,b,c"] + [",".join(f"{v:.6f}" for v in row) for row in x]
    (xfer / "samples.csv").write_text("\n".join(lines) + "\n")
    with Broker(xfer / "broker") as broker:
        write_config(xfer / "agent-x86.toml", _config(xfer, "x86-ref", broker))
        write_config(xfer / "agent-arm64.toml", _config(view, "arm64", broker))
        env_argv = [sys.executable, "-m", "agent", "run", "--config"]
        ref = _run_agent(
            [*env_argv, str(xfer / "agent-x86.toml")],
            broker,
            "x86-ref",
            windows,
            xfer / "agent-x86.log",
        )
        arm = _run_agent(
            [*cmd, "--config", str(view / "agent-arm64.toml")],
            broker,
            "arm64",
            windows,
            xfer / "agent-arm64.log",
        )
    for name, preds in (("x86", ref), ("arm64", arm)):
        seqs = [int(p["seq"]) for p in preds]
        if seqs != list(range(windows)):
            raise SystemExit(f"{name}: sequence numbers {seqs}, expected 0..{windows - 1}")
    differ = [
        (a["seq"], json.dumps(r["outputs"]), json.dumps(a["outputs"]))
        for r, a in zip(ref, arm, strict=True)
        if r["outputs"] != a["outputs"]
    ]
    if differ:
        seq, want, got = differ[0]
        raise SystemExit(
            f"arm64 outputs differ from x86 in {len(differ)} of {windows} predictions; "
            f"first at seq {seq}: x86 {want} arm64 {got}"
        )
    print(
        f"mqtt: {windows} predictions from arm64 and x86, seq 0..{windows - 1} with no gap "
        f"in both; arm64 outputs identical to x86 in all {windows}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("models")
    p.add_argument("dir", type=Path)
    p = sub.add_parser("mqtt-run")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--view", type=Path, required=True)
    p.add_argument("--windows", type=int, default=60)
    p.add_argument("agent", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.cmd == "models":
        print(" ".join(write_models(args.dir)))
    else:
        argv = [a for a in args.agent if a != "--"]
        mqtt_run(args.dir, args.view, args.windows, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
