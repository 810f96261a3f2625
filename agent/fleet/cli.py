"""``edge-fleet``: the fleet's state and model rollouts, from any machine that reaches the broker.

    edge-fleet status [--json] [--wait S] [--watch]
    edge-fleet rollout --package FILE.eapkg --base-url URL --channel canary [--group G ...]
                       [--percent P] [--max-failure-fraction F] [--timeout S] [--no-follow]
    edge-fleet rollout --model NAME --from-channel staging --channel canary ...
    edge-fleet promote --model NAME [--from canary] [--to stable] [--version V]
                       [--min-agreement 0.98 --min-windows 10000 [--wait S]]
    edge-fleet rollout ... --shadow        (install as a shadow: docs/shadow-and-drift.md)
    edge-fleet drift [--threshold PSI] [--json]
    edge-fleet serve [--listen 127.0.0.1] [--http-port 8080] [--token-file F | --basic-auth-file F]
    edge-fleet simulate --devices N [--behave refuse:version_reused=0.02 ...] [--duration S]

Broker options are the agent's ``[mqtt]`` table (``--config agent.toml``) or flags.

Exit codes: 0 done (status shown, rollout completed or announced, promoted); 1 rollout aborted
(the previous version was re-announced); 2 bad options, refused or broker unreachable;
3 rollout still running when ``--timeout`` ran out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.config import MqttSection
from agent.errors import EdgeAgentError
from agent.fleet.connection import add_broker_args, mqtt_settings, password
from agent.fleet.rollout import (
    Outcome,
    RolloutPolicy,
    RolloutReport,
    RolloutStore,
    abort_rollout,
    announcement_from_package,
    current_announcements,
    manifest_version,
    promote,
    resume_rollout,
    run_rollout,
    synced_and_reported,
)
from agent.fleet.shadowgate import (
    GateResult,
    drifting,
    plan_promotion,
    shadow_gate,
    shadows_reported,
)
from agent.fleet.simulator import Script, SimSpec, Simulator
from agent.fleet.view import (
    DeviceState,
    FleetView,
    all_reported,
    drift_cell,
    format_table,
    summary,
    watch_fleet,
)
from agent.release.manifest import Announcement, Targets, utc_now
from agent.terminal import CLEAR_SCREEN, is_terminal

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_ERROR = 2
EXIT_TIMEOUT = 3


def _add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        help="target this device group (repeat; default: all devices)",
    )
    p.add_argument(
        "--percent", type=float, default=100.0, help="share of the targeted devices (0-100)"
    )
    p.add_argument("--force", action="store_true", help="allow announcing an older version")
    p.add_argument(
        "--shadow",
        action="store_true",
        help="install as a shadow: run beside the active model, never serving (rollout only)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-fleet`` argument parser: status, rollout, promote, drift, serve, simulate."""
    parser = argparse.ArgumentParser(
        prog="edge-fleet", description="Fleet status and model rollouts over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-fleet {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", help="devices: online, model, OTA state, rate, queue")
    add_broker_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--wait",
        type=float,
        default=3.0,
        help="seconds to wait for metrics from online devices (default 3)",
    )
    p.add_argument("--watch", action="store_true", help="keep showing the table (Ctrl-C stops)")

    p = sub.add_parser("rollout", help="announce a version, follow it, abort on failures")
    add_broker_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--package", type=Path, help="the .eapkg to announce")
    src.add_argument("--from-channel", help="announce what this channel announces now")
    src.add_argument(
        "--resume",
        action="store_true",
        help="continue following the rollout of --model on --channel kept in --state-dir",
    )
    src.add_argument(
        "--abort",
        action="store_true",
        help="abort the rollout of --model on --channel kept in --state-dir (restores the "
        "previous announcement)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where rollouts are kept (default $XDG_STATE_HOME/edge-fleet/rollouts)",
    )
    p.add_argument("--base-url", help="artifact store URL the package was uploaded to")
    p.add_argument("--model", help="model name (needed with --from-channel)")
    p.add_argument("--version", help="expected version (checked against the manifest)")
    p.add_argument("--channel", required=True, help="channel to announce on, e.g. canary")
    p.add_argument(
        "--max-failure-fraction",
        type=float,
        default=0.2,
        help="abort when more than this share of the devices involved fail (default 0.2)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to follow (default 600)")
    p.add_argument(
        "--discover",
        type=float,
        default=5.0,
        help="seconds to wait for every online device's metrics before announcing (default 5; "
        "set it to the agents' metrics.interval_s)",
    )
    p.add_argument("--no-follow", action="store_true", help="announce and exit")
    _add_targets(p)

    p = sub.add_parser("promote", help="re-announce a channel's version on another channel")
    add_broker_args(p)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--from", dest="source", default="canary", help="source channel (canary)")
    p.add_argument("--to", dest="dest", default="stable", help="destination channel (stable)")
    p.add_argument("--version", help="expected version on the source channel")
    p.add_argument(
        "--min-agreement",
        type=float,
        help="promote only on devices whose shadow report has at least this top-1 agreement",
    )
    p.add_argument(
        "--min-windows", type=int, default=1000, help="...over at least this many windows"
    )
    p.add_argument(
        "--wait", type=float, default=5.0, help="seconds to collect shadow reports (default 5)"
    )
    p.epilog = (
        "With --min-agreement the version is announced to the passing devices by id: devices "
        "without a passing shadow report, and devices that join later, are not included. "
        "With --group as well, it is announced to the group when every device of it passed."
    )
    _add_targets(p)

    p = sub.add_parser("drift", help="devices over the drift threshold, by model version")
    add_broker_args(p)
    p.add_argument("--threshold", type=float, help="also list devices whose score reaches this")
    p.add_argument("--wait", type=float, default=3.0, help="seconds to collect (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("serve", help="the web dashboard (needs the 'fleet' extra)")
    add_broker_args(p)
    p.add_argument("--listen", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8080, help="port to serve on (8080)")
    p.add_argument(
        "--token-file", type=Path, help="file holding a bearer token (needed off loopback)"
    )
    p.add_argument(
        "--basic-auth-file", type=Path, help="file holding user:password (needed off loopback)"
    )
    p.add_argument(
        "--read-only", action="store_true", help="no rollout, abort or promote from the page"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where rollouts started from the page are kept (as for 'rollout'; default "
        "$XDG_STATE_HOME/edge-fleet/rollouts)",
    )

    p = sub.add_parser("simulate", help="run N simulated devices (real MQTT clients) here")
    add_broker_args(p)
    p.add_argument("--devices", type=int, default=100, help="how many (default 100)")
    p.add_argument("--id-prefix", default="sim-", help="device ids are PREFIX00000, ...")
    p.add_argument("--model", default="demo", help="model name the devices run (demo)")
    p.add_argument("--version", default="1.0.0", help="version they run at start (1.0.0)")
    p.add_argument("--sha256", help="artifact sha256 of that build (default: a fixed value)")
    p.add_argument("--groups", default="", help="comma-separated groups, assigned round-robin")
    p.add_argument("--channels", default="canary,stable", help="OTA channels followed")
    p.add_argument("--metrics-interval", type=float, default=10.0, help="seconds (10)")
    p.add_argument(
        "--prediction-rate", type=float, default=0.1, help="predictions/s per device (0.1)"
    )
    p.add_argument("--install-time", type=float, default=1.0, help="offer to running, s (1)")
    p.add_argument("--health-window", type=float, default=5.0, help="seconds (5)")
    p.add_argument(
        "--behave",
        action="append",
        default=[],
        metavar="BEHAVIOUR[:ARG]=SHARE",
        help="scripted share of the fleet: refuse[:REASON], fail_health, offline[:AFTER_S], "
        "flap[:PERIOD_S]; the rest accept (repeat)",
    )
    p.add_argument("--seed", type=int, default=0, help="which devices get which behaviour")
    p.add_argument("--connect-rate", type=float, default=2000.0, help="connections/s (2000)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument(
        "--clear-on-exit",
        action="store_true",
        help="remove the devices' retained messages when stopping (default: leave 'offline')",
    )
    return parser


# --------------------------------------------------------------------------- commands


def status_json(devices: list[DeviceState], now: float | None = None) -> dict[str, Any]:
    """What ``status --json`` prints: the summary and one object per device."""
    now = time.time() if now is None else now
    return {"summary": summary(devices), "devices": [d.to_json(now) for d in devices]}


def watch_frames(view: FleetView, out: TextIO, every_s: float = 2.0) -> None:
    """Show the table again and again: on a terminal in place, into a pipe or a file as plain
    frames separated by a blank line (no terminal control codes)."""
    tty = is_terminal(out)  # the one TTY rule (agent/terminal.py): TERM=dumb is no terminal
    while True:
        table = format_table(view.devices())
        out.write((CLEAR_SCREEN + table + "\n") if tty else (table + "\n\n"))
        out.flush()
        time.sleep(every_s)  # a refresh rate, not synchronisation


def cmd_status(args: argparse.Namespace) -> int:
    """``edge-fleet status``: print the fleet's devices (table or JSON), optionally live."""
    settings = mqtt_settings(args)
    with watch_fleet(settings, password(settings)) as view:
        # every retained status/OTA/metrics message is in once our sync marker came back
        view.wait_for(synced_and_reported(view), args.wait)
        if args.watch:
            try:
                watch_frames(view, sys.stdout)
            except (KeyboardInterrupt, BrokenPipeError):
                return EXIT_OK
        devices = view.devices()
    if args.json:
        print(json.dumps(status_json(devices), indent=2))
    else:
        print(format_table(devices))
    return EXIT_OK


def _targets(args: argparse.Namespace) -> Targets:
    return Targets(groups=args.groups, percent=args.percent, shadow=args.shadow or None)


def _show(quiet: bool) -> Callable[[str], None]:
    def show(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    return show


def _finish(args: argparse.Namespace, report: RolloutReport) -> int:
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        reasons = ", ".join(f"{n} {why}" for why, n in report.failure_reasons().items())
        print(
            f"{report.outcome.value}: {len(report.succeeded)} succeeded"
            + (f" ({len(report.already)} already on it)" if report.already else "")
            + f", {len(report.failed)} failed"
            + (f" ({reasons})" if reasons else "")
            + f", {len(report.pending)} pending of {len(report.targeted)} targeted"
            + (f"; {report.restored_text}" if report.restored_text else "")
        )
    return {
        Outcome.ABORTED: EXIT_ABORTED,
        Outcome.TIMED_OUT: EXIT_TIMEOUT,
    }.get(report.outcome, EXIT_OK)


def cmd_rollout(args: argparse.Namespace) -> int:
    """``edge-fleet rollout``: announce a version and follow it (or resume/abort one)."""
    settings = mqtt_settings(args)
    pw = password(settings)
    store = RolloutStore(args.state_dir or RolloutStore.default_dir())
    if args.resume or args.abort:
        if not args.model:
            raise EdgeAgentError("--resume and --abort need --model (and --channel)")
        if args.abort:
            rollout = store.load(args.channel, args.model)
            text = abort_rollout(settings, pw, rollout, store=store)
            print(f"aborted {args.model} {rollout.tracker.version} on {args.channel}: {text}")
            return EXIT_ABORTED
        report = resume_rollout(
            settings,
            pw,
            store,
            args.channel,
            args.model,
            timeout_s=args.timeout,
            on_event=_show(args.json),
        )
        return _finish(args, report)
    if args.package is not None:
        if not args.base_url:
            raise EdgeAgentError("--package needs --base-url (where the store serves it)")
        ann = announcement_from_package(args.package, args.channel, args.base_url, _targets(args))
    else:
        if not args.model:
            raise EdgeAgentError("--from-channel needs --model")
        src = current_announcements(settings, pw, args.model, [args.from_channel])
        found = src[args.from_channel]
        if found is None:
            raise EdgeAgentError(f"channel {args.from_channel} announces nothing for {args.model}")
        ann = Announcement.model_validate(
            found.model_dump()
            | {"channel": args.channel, "targets": _targets(args), "published_at": utc_now()}
        )
    name, version = manifest_version(ann)
    if args.model and args.model != name:
        raise EdgeAgentError(f"the package is model {name!r}, not {args.model!r}")
    if args.version and args.version != version:
        raise EdgeAgentError(f"the package is version {version}, not {args.version}")
    policy = RolloutPolicy(
        max_failure_fraction=args.max_failure_fraction,
        timeout_s=args.timeout,
        discover_s=args.discover,
    )
    report = run_rollout(
        settings,
        pw,
        ann,
        policy,
        follow=not args.no_follow,
        force=args.force,
        on_event=_show(args.json),
        store=store,
    )
    return _finish(args, report)


def _gate(
    args: argparse.Namespace, settings: MqttSection, pw: str | None
) -> tuple[GateResult, list[DeviceState]]:
    src = current_announcements(settings, pw, args.model, [args.source])[args.source]
    if src is None:
        raise EdgeAgentError(f"channel {args.source} announces nothing for {args.model}")
    _, version = manifest_version(src)
    with watch_fleet(settings, pw) as view:
        view.wait_for(lambda ds: all_reported(ds) and shadows_reported(ds), args.wait)
        devices = view.devices()
    gate = shadow_gate(devices, args.model, version, args.min_agreement, args.min_windows)
    for d in gate.passed:
        print(f"{d}: passes", file=sys.stderr)
    for d, why in sorted(gate.failed.items()):
        print(f"{d}: not promoted: {why}", file=sys.stderr)
    return gate, devices


def cmd_promote(args: argparse.Namespace) -> int:
    """``edge-fleet promote``: announce a channel's version on another channel."""
    settings = mqtt_settings(args)
    targets = _targets(args).model_copy(update={"shadow": None})
    plan = None
    if args.min_agreement is not None:
        gate, devices = _gate(args, settings, password(settings))
        plan = plan_promotion(gate, devices, args.groups)
        if not plan.promoted:
            if args.json:
                print(json.dumps({"promoted": [], "refused": plan.left_out}))
            print("edge-fleet promote: no device's shadow report passes", file=sys.stderr)
            return EXIT_ERROR
        if not plan.by_group:
            targets = targets.model_copy(update={"devices": plan.promoted})
    ann = promote(
        settings,
        password(settings),
        args.model,
        source=args.source,
        dest=args.dest,
        version=args.version,
        targets=targets,
        force=args.force,
    )
    _, version = manifest_version(ann)
    if args.json:
        out: dict[str, object] = {"model": args.model, "version": version, "channel": args.dest}
        if plan is not None:
            out |= {
                "promoted": plan.promoted,
                "refused": plan.left_out,
                "by": "group" if plan.by_group else "device",
                "groups": list(args.groups),
            }
        print(json.dumps(out))
    else:
        how = f" {plan.describe(args.groups)}" if plan is not None else ""
        print(f"promoted {args.model} {version}: {args.source} -> {args.dest}{how}")
    return EXIT_OK


def cmd_drift(args: argparse.Namespace) -> int:
    """``edge-fleet drift``: list devices whose drift score is over the threshold."""
    settings = mqtt_settings(args)
    with watch_fleet(settings, password(settings)) as view:
        view.wait_for(all_reported, args.wait)
        devices = view.devices()
    groups = drifting(devices, args.threshold)
    if args.json:
        print(json.dumps({k: [d.to_json() for d in v] for k, v in groups.items()}, indent=2))
        return EXIT_OK
    if not groups:
        print("no device over the drift threshold")
    for key, ds in groups.items():
        print(key)
        for d in ds:
            print(f"  {d.device}  {drift_cell(d)}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """``edge-fleet serve``: the web dashboard (needs the ``fleet`` extra)."""
    try:
        from agent.fleet.web.serve import ServeOptions, serve
    except ImportError as exc:
        raise EdgeAgentError(
            f"the dashboard needs the 'fleet' extra: pip install 'edge-agent[fleet]' ({exc})"
        ) from None
    settings = mqtt_settings(args)
    opts = ServeOptions(
        host=args.listen,
        port=args.http_port,
        token_file=args.token_file,
        basic_auth_file=args.basic_auth_file,
        actions=not args.read_only,
        state_dir=args.state_dir,
    )
    serve(settings, password(settings), opts)
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """``edge-fleet simulate``: run simulated devices against a test broker."""
    settings = mqtt_settings(args)
    if settings.tls.enabled or settings.username:
        raise EdgeAgentError("the simulator connects without TLS or credentials (a test broker)")
    spec = SimSpec(
        devices=args.devices,
        prefix=settings.topic_prefix,
        id_prefix=args.id_prefix,
        model=args.model,
        version=args.version,
        **({"sha256": args.sha256} if args.sha256 else {}),
        groups=tuple(g for g in args.groups.split(",") if g),
        channels=tuple(c for c in args.channels.split(",") if c),
        metrics_interval_s=args.metrics_interval,
        prediction_rate=args.prediction_rate,
        install_s=args.install_time,
        health_s=args.health_window,
        scripts=tuple(Script.parse(b) for b in args.behave),
        seed=args.seed,
        connect_rate=args.connect_rate,
    )
    sim = Simulator(spec, settings.host, settings.port)
    t0 = time.monotonic()
    sim.start()
    try:
        sim.wait_online(spec.devices, 600.0)
        up = time.monotonic() - t0
        print(
            json.dumps(
                {"ready": sim.online, "devices": spec.devices, "seconds": round(up, 2)}
                | {"behaviours": dict(sim.behaviours())}
            ),
            flush=True,
        )
        end = None if args.duration is None else t0 + args.duration
        while end is None or time.monotonic() < end:
            left = 10.0 if end is None else min(10.0, end - time.monotonic())
            if left > 0:
                time.sleep(left)  # the swarm thread does the work; this only reports
            print(json.dumps({"online": sim.online} | dict(sim.counts)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop(clear=args.clear_on_exit)
    return EXIT_OK


COMMANDS = {
    "status": cmd_status,
    "rollout": cmd_rollout,
    "promote": cmd_promote,
    "drift": cmd_drift,
    "serve": cmd_serve,
    "simulate": cmd_simulate,
}


def _version() -> str:
    from agent import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-fleet``: run the subcommand; EXIT_ERROR on an ``EdgeAgentError``."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EdgeAgentError as exc:
        print(f"edge-fleet {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
