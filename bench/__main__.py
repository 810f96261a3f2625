"""``python -m bench``: run the benchmark families, print one table, write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    convert,
    dashboard,
    fleet,
    forward,
    models,
    shadow,
    startup,
    steady,
    swap,
    throughput,
    tufclient,
)
from bench.context import Context
from bench.procs import OUT, REPO, load_average, machine, versions
from bench.report import CALIBRATION_MODELS, Row, calibration, table, write_doc
from tests.broker import Broker

FAMILIES: dict[str, Callable[[Context], list[Row]]] = {
    "throughput": throughput.run,
    "steady": steady.run,
    "startup": startup.run,
    "forward": forward.run,
    "swap": swap.run,
    "convert": convert.run,
    "shadow": shadow.run,
    "fleet": fleet.run,
    "dashboard": dashboard.run,
    "tufclient": tufclient.run,
}
DOC = REPO / "docs" / "benchmarks.md"
MODEL_FREE = {"fleet", "tufclient"}
"""Families that need none of the benchmark models (nothing is built for them)."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="everything tiny (< 1 min), no docs")
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (3; smoke 1)")
    ap.add_argument(
        "--soak-minutes",
        type=float,
        default=None,
        help="length of the memory soak at 100 windows/s (2; smoke 0.1; the target is 10)",
    )
    ap.add_argument("--only", default="", help=f"comma-separated families: {', '.join(FAMILIES)}")
    ap.add_argument(
        "--doc",
        type=Path,
        default=None,
        help="Markdown report (default: docs/benchmarks.md for a full run of every family)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="bench: %(name)s: %(message)s")
    logging.getLogger("agent").setLevel(logging.CRITICAL)  # its reconnect warnings are expected
    only = [f for f in args.only.split(",") if f] or list(FAMILIES)
    unknown = set(only) - set(FAMILIES)
    if unknown:
        print(f"bench: unknown families {sorted(unknown)}", file=sys.stderr)
        return 2
    repeat = args.repeat or (1 if args.smoke else 3)
    soak = args.soak_minutes if args.soak_minutes is not None else (0.1 if args.smoke else 2.0)
    doc = args.doc
    if doc is None and not args.smoke and only == list(FAMILIES):
        doc = DOC
    t_start = time.monotonic()
    names = ["tiny", "tiny-b"] if args.smoke else list(models.SPECS)
    if set(only) - MODEL_FREE:
        models.ensure(names)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    broker = Broker(workdir / "broker")
    broker.start()
    ctx = Context(workdir, args.smoke, repeat, soak, broker)
    rows: list[Row] = []
    crashed = False
    calib = ""
    try:
        for fam in only:
            t0 = time.monotonic()
            print(f"bench: {fam} ...", file=sys.stderr, flush=True)
            try:
                got = FAMILIES[fam](ctx)
            except Exception as exc:
                crashed = True
                traceback.print_exc()
                got = [Row(f"{fam} (crashed)", "", float("nan"), note=f"{exc}"[:300])]
            rows += got
            took = time.monotonic() - t0
            for r in got:
                print(f"bench:   {r.target}: {r.agent:.4g} {r.unit} {r.verdict}", file=sys.stderr)
            print(f"bench: {fam} took {took:.0f} s", file=sys.stderr, flush=True)
        calib = calibration(calibrate(ctx, names))
        print(f"bench: {calib}", file=sys.stderr, flush=True)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - t_start
    print(table(rows))
    judged = [r for r in rows if not r.info]
    print(f"\n{len(judged)} targets, {sum(r.passed for r in judged)} pass, in {took:.0f} s")
    print(calib)
    if doc is not None:
        command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        write_doc(
            doc,
            rows,
            command=command.strip(),
            machine=machine(),
            extra=(
                f"run took {took:.0f} s; soak {soak:g} min; {repeat} run(s) per figure; load "
                f"average at the end {load_average()}; {versions()}"
            ),
            notes=(DOC_NOTES_FILE.read_text() if DOC_NOTES_FILE.exists() else ""),
            calibration_line=calib,
        )
        print(f"wrote {doc}")
    if crashed:
        return 2
    return 0 if all(r.passed for r in judged) else 1


def calibrate(ctx: Context, names: list[str]) -> dict[str, float]:
    """Bare-loop rates of the calibration models this run has (measured once, cached)."""
    rates: dict[str, float] = {}
    for name in CALIBRATION_MODELS:
        if name not in names:
            continue
        try:
            rates[name] = ctx.limit(name).rate
        except Exception:  # a calibration that fails must not hide the rows already measured
            traceback.print_exc()
    return rates


DOC_NOTES_FILE = REPO / "bench" / "NOTES.md"
"""Hand-written analysis appended to docs/benchmarks.md (what fails and why, profiles)."""


if __name__ == "__main__":
    sys.exit(main())
