"""``edge-agent``: the device-side command line.

    edge-agent run [--config config.toml]       run the daemon (no --config: embedded defaults)
    edge-agent check-config [--config ...]      validate, print the effective config
    edge-agent doctor [--config ...]            broker, runtime, state dir, keys, clock: a table
    edge-agent inspect MODEL                    tensors, quantisation, ops, size of a .tflite/.eapkg
    edge-agent predict MODEL --input FILE       one-shot inference, JSON out (--stream: a
                                                recording windowed as `run` does, state carried)
    edge-agent demo                             local broker, agent on defaults, prints predictions

Exit codes: 0 success, 1 failure at run time, 2 bad model or bad input at start, 78 (EX_CONFIG)
invalid configuration for `run` (systemd does not restart it: retrying cannot help), 2 for
`check-config`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import ConfigError, EdgeAgentError

log = logging.getLogger(__name__)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="config.toml (default: the embedded defaults: demo model, synthetic source, "
        "broker on localhost:1883). EDGE_AGENT__TABLE__KEY environment variables override it.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-agent`` argument parser: run, check-config, doctor, inspect, predict, demo."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="On-device ML inference: sensor samples in, predictions out over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent (the systemd service runs this)")
    _add_config(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)

    p = sub.add_parser("check-config", help="validate a config and print the effective values")
    _add_config(p)

    p = sub.add_parser(
        "doctor",
        help="check the environment beyond the config (broker, runtime, state dir, keys, "
        "clock, credentials); exit 1 when something fails",
    )
    _add_config(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per broker step")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("inspect", help="describe a .tflite model or .eapkg package")
    p.add_argument("model", type=Path, help="model file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--runtime", default="auto", help="auto | litert | tflite-runtime | tensorflow")

    p = sub.add_parser("predict", help="run a model once on an input file and print JSON")
    p.add_argument("model", type=Path, help="model file (.tflite or .eapkg)")
    p.add_argument(
        "--input",
        "-i",
        type=Path,
        required=True,
        help=".npy, .npz (one array per input name), .json or .csv with the input values "
        "(float; quantised with the input tensor's own scale/zero-point)",
    )
    p.add_argument("--runtime", default="auto", help="auto | litert | tflite-runtime | tensorflow")
    _add_predict_fidelity(p)

    p = sub.add_parser(
        "demo", help="start a local broker and the agent on its defaults; show predictions"
    )
    p.add_argument("--seconds", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--count", type=int, default=0, help="stop after N predictions (0: no limit)")
    p.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="auto: a broker on localhost:1883, else a private Mosquitto, else amqtt",
    )
    return parser


def _add_predict_fidelity(p: argparse.ArgumentParser) -> None:
    """``predict``'s options at parity with ``run``: kernels, threads, signature, streaming."""
    p.add_argument(
        "--reference-kernels",
        action="store_true",
        help="builtin reference kernels without XNNPACK (model.reference_kernels): bit-exact "
        "with TFLite's C library / TFLite Micro (docs/fidelity.md)",
    )
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (model.num_threads)")
    p.add_argument("--signature", default=None, help="signature to run (model.signature)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="the input is a recording (samples, channels): cut it into windows as `run` does "
        "and run them in order on one interpreter (state carried); one JSON line per window",
    )
    p.add_argument(
        "--hop",
        type=int,
        default=None,
        help="--stream: samples between window starts (window.hop; default: the window length)",
    )
    p.add_argument(
        "--carry-state",
        action="store_true",
        help="without --stream: feed the examples to one interpreter in order (a stateful "
        "model then carries its state from one to the next; default: each starts fresh)",
    )


def _model_bytes(path: Path) -> bytes:
    from agent.model.loading import read_model_source

    data = read_model_source(str(path))
    if path.suffix == ".eapkg":
        from agent.release.package import read_package

        return read_package(data).model
    return data


def cmd_run(args: argparse.Namespace) -> int:
    """``edge-agent run``: load the config and run the agent until stopped; its exit code."""
    from agent.app import allocator

    allocator.tune()  # before the model and the recordings are read (resident memory)
    from agent.app.logs import setup_logging
    from agent.app.service import EXIT_CONFIG, Agent
    from agent.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: invalid configuration\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or cfg.agent.log_level, cfg.agent.log_format)
    agent = Agent(cfg, args.config)
    agent.install_signal_handlers()
    return agent.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and run every check start-up runs (``agent.app.preflight``); print
    the effective configuration (what the model's package decided included)."""
    from agent.app.preflight import check
    from agent.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    eff, _, problems = check(cfg)
    source = args.config or "embedded defaults"
    if problems:
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {p.key}: {p.reason}" for p in problems]
        print("edge-agent: invalid configuration\n" + "\n".join(lines), file=sys.stderr)
        return 2
    print(json.dumps(eff.model_dump(mode="json"), indent=2))
    warning = eff.http.exposure_warning()
    if warning is not None:
        print(f"warning: http.host: {warning}", file=sys.stderr)
    print(f"{source}: OK", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """``edge-agent doctor``: check the environment; 1 when a check fails, 2 for a bad config."""
    import os

    from agent.app.doctor import diagnose, format_rows
    from agent.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    rows = diagnose(cfg, dict(os.environ), timeout_s=args.timeout)
    if args.json:
        print(json.dumps([{"check": r.check, "ok": r.ok, "detail": r.detail} for r in rows]))
    else:
        print(format_rows(rows))
    return 1 if any(r.ok is False for r in rows) else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``edge-agent inspect``: print a model's inputs, outputs and metadata (table or JSON)."""
    from agent.model.modelinfo import describe_model, format_description

    d = describe_model(_model_bytes(args.model), runtime=args.runtime, path=str(args.model))
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0


def _runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime choices every ``predict`` path passes to the model loader."""
    return {
        "runtime": args.runtime,
        "signature": args.signature,
        "num_threads": args.threads,
        "reference_kernels": args.reference_kernels,
    }


def cmd_predict(args: argparse.Namespace) -> int:
    """``edge-agent predict``: run a model (or package) on an input file and print JSON."""
    if args.stream:
        return _predict_stream(args)
    from agent.model.modelinfo import predict_file

    if args.model.suffix == ".eapkg":
        return _predict_package(args)
    out = predict_file(
        _model_bytes(args.model),
        args.input,
        **_runtime_options(args),
        carry_state=args.carry_state,
        label=str(args.model),
    )
    print(json.dumps(out))
    return 0


def _predict_package(args: argparse.Namespace) -> int:
    """``predict`` on a package: its manifest decides, as at start-up (labels, normalisation,
    the window layout, the source model's input layout)."""
    from agent.app.packaged import package_inputs
    from agent.model.loading import read_model_source
    from agent.model.modelinfo import predict_file
    from agent.release.package import read_package

    pkg = read_package(read_model_source(str(args.model)))
    m = pkg.manifest
    out = predict_file(
        pkg.model,
        args.input,
        **_runtime_options(args),
        carry_state=args.carry_state,
        labels=list(m.labels) or None,
        label=f"{m.name} {m.version}",
        prepare=package_inputs(m),
    )
    out["package"] = {"name": m.name, "version": m.version, "sha256": m.artifact.sha256}
    print(json.dumps(out))
    return 0


def _predict_stream(args: argparse.Namespace) -> int:
    """``predict --stream``: one JSON line per window of the recording, in order."""
    from agent.pipeline.offline import predict_stream

    lines = predict_stream(
        _model_bytes(args.model),
        args.input,
        **_runtime_options(args),
        hop=args.hop,
        label=str(args.model),
    )
    for line in lines:
        print(json.dumps(line))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``edge-agent demo``: the agent on the demo model with a local broker."""
    from agent.app.demo import run_demo

    return run_demo(seconds=args.seconds, count=args.count, broker=args.broker)


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "doctor": cmd_doctor,
    "inspect": cmd_inspect,
    "predict": cmd_predict,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-agent``: run the subcommand; 2 on an ``EdgeAgentError``."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeAgentError as exc:
        print(f"edge-agent {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
