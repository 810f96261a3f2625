"""``edge-fleet``: the fleet's state and model rollouts, from any machine that reaches the broker.

    edge-fleet status [--json] [--wait S] [--watch]
    edge-fleet rollout --package FILE.eapkg --base-url URL --channel canary [--group G ...]
                       [--percent P] [--max-failure-fraction F] [--timeout S] [--no-follow]
    edge-fleet rollout --model NAME --from-channel staging --channel canary ...
    edge-fleet promote --model NAME [--from canary] [--to stable] [--version V]
                       [--min-agreement 0.98 --min-windows 10000 [--wait S]]
    edge-fleet rollout ... --shadow        (install as a shadow: docs/shadow-and-drift.md)
    edge-fleet drift [--threshold PSI] [--json]

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
from pathlib import Path

from agent.config import MqttSection
from agent.errors import EdgeAgentError
from agent.fleet.connection import add_broker_args, mqtt_settings, password
from agent.fleet.rollout import (
    Outcome,
    RolloutPolicy,
    announcement_from_package,
    current_announcements,
    manifest_version,
    promote,
    run_rollout,
)
from agent.fleet.shadowgate import GateResult, drifting, shadow_gate, shadows_reported
from agent.fleet.view import all_reported, drift_cell, format_table, watch_fleet
from agent.release.manifest import Announcement, Targets, utc_now

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
    parser = argparse.ArgumentParser(
        prog="edge-fleet", description="Fleet status and model rollouts over MQTT."
    )
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
    _add_targets(p)

    p = sub.add_parser("drift", help="devices over the drift threshold, by model version")
    add_broker_args(p)
    p.add_argument("--threshold", type=float, help="also list devices whose score reaches this")
    p.add_argument("--wait", type=float, default=3.0, help="seconds to collect (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


# --------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    settings = mqtt_settings(args)
    with watch_fleet(settings, password(settings)) as view:
        time.sleep(min(0.5, args.wait))  # retained status/OTA arrive right after SUBACK
        view.wait_for(all_reported, max(0.0, args.wait - 0.5))
        if args.watch:
            try:
                while True:
                    print("\033[2J\033[H" + format_table(view.devices()), flush=True)
                    time.sleep(2.0)
            except KeyboardInterrupt:
                return EXIT_OK
        devices = view.devices()
    if args.json:
        now = time.time()
        print(json.dumps([d.to_json(now) for d in devices], indent=2))
    else:
        print(format_table(devices))
    return EXIT_OK


def _targets(args: argparse.Namespace) -> Targets:
    return Targets(groups=args.groups, percent=args.percent, shadow=args.shadow or None)


def cmd_rollout(args: argparse.Namespace) -> int:
    settings = mqtt_settings(args)
    pw = password(settings)
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
    quiet = args.json

    def show(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    report = run_rollout(
        settings, pw, ann, policy, follow=not args.no_follow, force=args.force, on_event=show
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(
            f"{report.outcome.value}: {len(report.succeeded)} succeeded, {len(report.failed)} "
            f"failed, {len(report.pending)} pending of {len(report.targeted)} targeted"
        )
    return {
        Outcome.ABORTED: EXIT_ABORTED,
        Outcome.TIMED_OUT: EXIT_TIMEOUT,
    }.get(report.outcome, EXIT_OK)


def _gate(args: argparse.Namespace, settings: MqttSection, pw: str | None) -> GateResult:
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
    return gate


def cmd_promote(args: argparse.Namespace) -> int:
    settings = mqtt_settings(args)
    targets = _targets(args).model_copy(update={"shadow": None})
    gate = None
    if args.min_agreement is not None:
        gate = _gate(args, settings, password(settings))
        if not gate.passed:
            if args.json:
                print(json.dumps({"promoted": [], "refused": gate.failed}))
            print("edge-fleet promote: no device's shadow report passes", file=sys.stderr)
            return EXIT_ERROR
        targets = targets.model_copy(update={"devices": gate.passed})
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
        if gate is not None:
            out |= {"promoted": gate.passed, "refused": gate.failed}
        print(json.dumps(out))
    else:
        print(f"promoted {args.model} {version}: {args.source} -> {args.dest}")
    return EXIT_OK


def cmd_drift(args: argparse.Namespace) -> int:
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


COMMANDS = {
    "status": cmd_status,
    "rollout": cmd_rollout,
    "promote": cmd_promote,
    "drift": cmd_drift,
}


def main(argv: list[str] | None = None) -> int:
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
