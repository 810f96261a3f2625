"""``edge-convert tuf ...``: the TUF repository of a store (converters.tufrepo; docs/ota.md).

    edge-convert tuf init      --store S --keys DIR [--root-keys 3 --threshold 2]
    edge-convert tuf add       PKG --store S --keys DIR [--channel c] [--groups a,b] [--percent p]
                               [--devices d1,d2] [--shadow]
    edge-convert tuf timestamp --store S --keys DIR      (the timer: more often than once a day)
    edge-convert tuf rotate    --store S --keys DIR [--add-key F] [--revoke KEYID] [--threshold n]
    edge-convert tuf status    --store S --keys DIR
    edge-convert tuf bundle    PKG --store S --keys DIR --out FILE.eatuf   (offline drop-in)

``tuf`` and ``securesystemslib`` come with the ``convert`` extra; they are imported only when
a ``tuf`` command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _repo(args: argparse.Namespace) -> Any:
    from converters.store import open_store
    from converters.tufrepo import TufRepository

    return TufRepository(open_store(args.store, None, args.s3_endpoint_url), args.keys)


def cmd_tuf(args: argparse.Namespace) -> int:
    """``edge-convert tuf``: init, add, timestamp, rotate, status, bundle; prints JSON."""
    from agent.release.package import read_package
    from converters.tufrepo import TargetInfo

    repo = _repo(args)
    out: dict[str, Any]
    if args.tuf_command == "init":
        root_key = repo.init(args.root_keys, args.threshold)
        out = {"root": root_key, "keys": str(args.keys), "expires": repo.expiries()}
    elif args.tuf_command == "add":
        pkg = read_package(args.package)
        m = pkg.manifest
        info = TargetInfo(
            m.name,
            m.version,
            [args.channel],
            args.groups or [],
            args.percent,
            devices=args.devices,
            shadow=args.shadow,
        )
        out = {"target": repo.add_target(pkg, info), "expires": repo.expiries()}
    elif args.tuf_command == "timestamp":
        out = {"timestamp_expires": repo.refresh_timestamp().isoformat()}
    elif args.tuf_command == "rotate":
        version = repo.rotate_root(args.add_key or [], args.revoke or [], args.threshold)
        out = {"root_version": version}
    elif args.tuf_command == "bundle":
        from agent.durable import atomic_write

        m = read_package(args.package).manifest
        atomic_write(args.out, repo.bundle(m.name, m.version))
        out = {"bundle": str(args.out)}
    else:
        out = {"expires": repo.expiries()}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


def add_tuf_parser(sub: Any) -> None:
    """Add the ``tuf`` subcommand and its subcommands to ``sub``."""
    p = sub.add_parser("tuf", help="the TUF repository of a store (init, add, timestamp, ...)")
    tsub = p.add_subparsers(dest="tuf_command", required=True)
    for name, help_text in (
        ("init", "create the repository: root keys with a threshold, one key per online role"),
        ("add", "make a published package a target (channel, groups, rollout percentage)"),
        ("timestamp", "re-sign the timestamp with a fresh expiry (run from a timer)"),
        ("rotate", "a new root version: add or revoke root keys, change the threshold"),
        ("status", "the expiry of every role"),
        ("bundle", "an offline bundle (metadata + package) for a device's drop-in folder"),
    ):
        t = tsub.add_parser(name, help=help_text)
        t.add_argument("--store", required=True, help="directory or s3://bucket/prefix")
        t.add_argument("--keys", type=Path, required=True, help="directory of the TUF keys")
        t.add_argument("--s3-endpoint-url", help="S3-compatible endpoint")
        if name == "init":
            t.add_argument("--root-keys", type=int, default=3, help="number of root keys")
            t.add_argument("--threshold", type=int, default=2, help="root keys needed to sign")
        if name in ("add", "bundle"):
            t.add_argument("package", type=Path)
        if name == "bundle":
            t.add_argument("--out", type=Path, required=True, help="the .eatuf file to write")
        if name == "add":
            t.add_argument("--channel", default="stable")
            t.add_argument("--groups", type=_csv, help="target device groups: a,b (default all)")
            t.add_argument("--percent", type=float, default=100.0, help="rollout percentage")
            t.add_argument("--devices", type=_csv, help="only these device ids: d1,d2")
            t.add_argument(
                "--shadow",
                action="store_true",
                help="install as a shadow (signed: docs/shadow-and-drift.md); adding the "
                "package again without it promotes the shadow",
            )
        if name == "rotate":
            t.add_argument("--add-key", type=Path, action="append", help="a root key file to add")
            t.add_argument("--revoke", action="append", help="a root key id to revoke")
            t.add_argument("--threshold", type=int, help="the new root threshold")
        t.set_defaults(func=cmd_tuf)
