"""Result rows, the printed table and docs/benchmarks.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One measured target: the agent's figure, the references, the ratio, the verdict."""

    target: str
    """The spec's target number and what is measured, e.g. ``1 throughput mnv2-96``."""
    unit: str
    agent: float
    refs: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None
    goal: str = ""
    passed: bool = False
    note: str = ""

    info: bool = False
    """A figure shown for context, with no target of its own (never counted as a failure)."""

    @property
    def verdict(self) -> str:
        if self.info:
            return "info"
        return "PASS" if self.passed else "FAIL"


def fmt(v: float) -> str:
    if math.isnan(v):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cells(r: Row) -> list[str]:
    refs = ", ".join(f"{k} {fmt(v)}" for k, v in r.refs.items()) or "-"
    ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
    return [r.target, f"{fmt(r.agent)} {r.unit}", refs, ratio, r.goal, r.verdict]


HEADER = ["benchmark", "agent", "references (same run)", "ratio", "target", "result"]


def table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.target}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    """The same table as Markdown."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        c = _cells(r)
        c[-1] = f"**{c[-1]}**"
        out.append("| " + " | ".join(v.replace("|", "\\|") for v in c) + " |")
    return "\n".join(out)


CALIBRATION_MODELS = ("tiny", "kws", "mnv2-96")
"""The three model sizes whose bare loop rates calibrate a run (small, medium, large)."""


def calibration(rates: dict[str, float]) -> str:
    """The one-line machine calibration: bare-loop invokes/s of the three model sizes.

    Runs on different machines compare through it: a row's ratio that moves with these
    rates moves with the machine, not with the code.
    """
    parts = [f"{name} {fmt(rates[name])}/s" for name in CALIBRATION_MODELS if name in rates]
    return "calibration (bare invoke loop): " + (", ".join(parts) or "not measured")


def write_doc(
    path: Path,
    rows: list[Row],
    *,
    command: str,
    machine: str,
    extra: str,
    notes: str,
    calibration_line: str = "",
) -> None:
    judged = [r for r in rows if not r.info]
    passed = sum(r.passed for r in judged)
    failed = [r.target for r in judged if not r.passed]
    body = [
        "# Benchmarks",
        "",
        "Written by `bench` (do not edit by hand; re-run it). What each row measures, the",
        "references and how the figures are taken are described in `bench/__init__.py`.",
        "",
        *([f"- {calibration_line}"] if calibration_line else []),
        f"- command: `{command}`",
        f"- machine: {machine}",
        f"- {extra}",
        f"- result: {passed}/{len(judged)} targets pass"
        + (f"; failing: {', '.join(failed)}" if failed else ""),
        "",
        markdown(rows),
        "",
    ]
    row_notes = [f"- **{r.target}**: {r.note}" for r in rows if r.note]
    if row_notes:
        body += ["## Row notes", "", *row_notes, ""]
    if notes:
        body += [notes.rstrip(), ""]
    path.write_text("\n".join(body))
