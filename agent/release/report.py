"""The verification report as a picture: one HTML rendering for the build host and the dashboard.

``edge-convert convert`` and ``package`` write it as a standalone page (``report_document``);
the fleet dashboard's releases page shows the same fragment (``render_report``) for every
package a channel offers, from the signed manifest's ``verification``. Contents:

* float (reference) vs converted accuracy and top-1 agreement, per output;
* for a labelled classifier, both variants' confusion matrices side by side, the cells whose
  counts differ highlighted (``class="changed"``), and per-class precision and recall;
* per output, a histogram of |converted - reference| as inline SVG;
* size and median invoke latency of each variant;
* the golden samples (the device's smoke test) with their tolerances.

Plain string building with ``html.escape`` and inline SVG: no template engine or charting
library, so the module costs nothing where it is not used. Confusion cells carry
``data-true`` / ``data-pred`` (class indices) so tests read the value shown for a cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from agent.release.manifest import (
    Confusion,
    GoldenSample,
    Histogram,
    Manifest,
    OutputMetrics,
    VerificationReport,
)

REPORT_CSS = """
.report table { border-collapse: collapse; margin: .4em 0 1em; }
.report th, .report td { border: 1px solid #ccd; padding: .2em .5em; text-align: right; }
.report th { background: #eef; }
.report td.changed { background: #ffd27f; font-weight: bold; }
.report td.diag { background: #e3f5e3; }
.report td.diag.changed { background: #ffd27f; }
.report .pair { display: flex; gap: 2em; flex-wrap: wrap; }
.report .verdict-pass { color: #186a18; font-weight: bold; }
.report .verdict-fail { color: #b00020; font-weight: bold; }
.report svg { background: #fafafe; border: 1px solid #ccd; }
"""


def _f(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _label(labels: Sequence[str], i: int) -> str:
    return labels[i] if i < len(labels) else str(i)


def histogram_svg(hist: Histogram, width: int = 360, height: int = 120) -> str:
    """Bars of ``hist`` as an inline SVG (log-free: counts scaled to the tallest bin)."""
    n = len(hist.counts)
    top = max(hist.counts) or 1
    pad_l, pad_b = 4, 18
    bw = (width - pad_l * 2) / n
    bars = []
    for i, c in enumerate(hist.counts):
        h = (height - pad_b - 4) * c / top
        x = pad_l + i * bw
        y = height - pad_b - h
        lo, hi = hist.edges[i], hist.edges[i + 1]
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="#4a6fd4"><title>{lo:.3g} to {hi:.3g}: {c}</title></rect>'
        )
    axis = (
        f'<text x="{pad_l}" y="{height - 4}" font-size="10">0</text>'
        f'<text x="{width - pad_l}" y="{height - 4}" font-size="10" text-anchor="end">'
        f"{hist.edges[-1]:.3g}</text>"
    )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img">'
        + "".join(bars)
        + axis
        + "</svg>"
    )


def _matrix(name: str, m: list[list[int]], other: list[list[int]], labels: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(_label(labels, j))}</th>" for j in range(len(m)))
    rows = []
    for i, row in enumerate(m):
        cells = []
        for j, v in enumerate(row):
            cls = ["diag"] if i == j else []
            if v != other[i][j]:
                cls.append("changed")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f'<td{attr} data-true="{i}" data-pred="{j}">{v}</td>')
        rows.append(f"<tr><th>{escape(_label(labels, i))}</th>{''.join(cells)}</tr>")
    return (
        f'<div><h4>{escape(name)}</h4><table class="confusion" data-variant="{escape(name)}">'
        f"<tr><th>true \\ predicted</th>{head}</tr>{''.join(rows)}</table></div>"
    )


def precision_recall(m: list[list[int]]) -> list[tuple[float | None, float | None]]:
    """(precision, recall) per class from ``[true][predicted]`` counts (None: no samples)."""
    n = len(m)
    out: list[tuple[float | None, float | None]] = []
    for k in range(n):
        tp = m[k][k]
        predicted = sum(m[i][k] for i in range(n))
        actual = sum(m[k])
        out.append((tp / predicted if predicted else None, tp / actual if actual else None))
    return out


def _confusion(c: Confusion, labels: Sequence[str]) -> str:
    pair = (
        '<div class="pair">'
        + _matrix("reference", c.reference, c.candidate, labels)
        + _matrix("candidate", c.candidate, c.reference, labels)
        + "</div>"
    )
    ref, cand = precision_recall(c.reference), precision_recall(c.candidate)
    rows = []
    for k in range(c.classes):
        cells = []
        for a, b in ((ref[k][0], cand[k][0]), (ref[k][1], cand[k][1])):
            changed = ' class="changed"' if a != b else ""
            cells.append(f"<td>{_f(a, '.3f')}</td><td{changed}>{_f(b, '.3f')}</td>")
        rows.append(f"<tr><th>{escape(_label(labels, k))}</th>{''.join(cells)}</tr>")
    table = (
        '<table class="per-class"><tr><th>class</th><th>precision (reference)</th>'
        "<th>precision (candidate)</th><th>recall (reference)</th><th>recall (candidate)</th>"
        f"</tr>{''.join(rows)}</table>"
    )
    return pair + table


def _output(o: OutputMetrics, labels: Sequence[str]) -> str:
    parts = [f"<h3>output {escape(o.name)}</h3>"]
    if o.confusion is not None:
        parts.append(_confusion(o.confusion, labels))
    if o.error_histogram is not None:
        parts.append(
            "<p>|candidate - reference| over every value "
            f"(max {o.max_abs_error:.4g}, mean {o.mean_abs_error:.4g}):</p>"
            + histogram_svg(o.error_histogram)
        )
    return f'<div class="output" data-output="{escape(o.name)}">' + "".join(parts) + "</div>"


def _golden(golden: Sequence[GoldenSample]) -> str:
    if not golden:
        return ""
    rows = []
    for g in golden:
        shapes = ", ".join("x".join(map(str, a.shape)) for a in g.inputs)
        first = []
        for a in g.outputs:
            flat = a.to_numpy().ravel()
            vals = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", ..." if flat.size > 6 else "")
            first.append(f"[{vals}]")
        rows.append(
            f"<tr><td>{escape(g.name)}</td><td>{escape(shapes)}</td>"
            f"<td style='text-align:left'>{escape(' '.join(first))}</td>"
            f"<td>{g.atol:.3g}</td><td>{g.rtol:.3g}</td></tr>"
        )
    return (
        '<h3>golden samples (the smoke test a device runs)</h3><table class="golden">'
        "<tr><th>sample</th><th>input shape</th><th>expected output</th><th>atol</th>"
        f"<th>rtol</th></tr>{''.join(rows)}</table>"
    )


def render_report(
    report: VerificationReport | None,
    *,
    title: str,
    labels: Sequence[str] = (),
    golden: Sequence[GoldenSample] = (),
) -> str:
    """The report as an HTML fragment (``<section class="report">``)."""
    parts = [f"<h2>{escape(title)}</h2>"]
    if report is None:
        parts.append("<p>No verification report: packaged without validation data.</p>")
        return '<section class="report">' + "".join(parts) + _golden(golden) + "</section>"
    verdict = (
        '<span class="verdict-pass">PASSED</span>'
        if report.passed
        else '<span class="verdict-fail">FAILED</span>'
    )
    gates = [
        f"{k} {v:g}"
        for k, v in (
            ("max_accuracy_drop", report.max_accuracy_drop),
            ("min_agreement", report.min_agreement),
        )
        if v is not None
    ]
    parts.append(
        f"<p>{verdict} on {escape(report.dataset)}: {report.samples} samples, "
        f"{'labelled' if report.labelled else 'no labels'}; "
        f"{escape(', '.join(gates) or 'no thresholds set')}</p>"
    )
    if report.failures:
        parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in report.failures) + "</ul>")
    rows = "".join(
        f"<tr><td>{escape(v.name)}</td><td>{escape(v.mode)}</td><td>{v.size:,}</td>"
        f"<td>{v.latency_ms_p50:.4f}</td><td>{escape(v.runtime)}</td></tr>"
        for v in report.variants
    )
    parts.append(
        '<h3>variants</h3><table class="variants"><tr><th>variant</th><th>mode</th>'
        f"<th>size (bytes)</th><th>p50 invoke (ms)</th><th>runtime</th></tr>{rows}</table>"
    )
    rows = "".join(
        f'<tr data-output="{escape(o.name)}"><td>{escape(o.name)}</td>'
        f"<td>{_f(o.reference_accuracy)}</td><td>{_f(o.accuracy)}</td>"
        f"<td>{_f(o.accuracy_drop)}</td><td>{_f(o.top1_agreement)}</td>"
        f"<td>{o.max_abs_error:.4g}</td><td>{o.mean_abs_error:.4g}</td></tr>"
        for o in report.outputs
    )
    parts.append(
        '<h3>accuracy: float reference vs converted</h3><table class="accuracy"><tr>'
        "<th>output</th><th>reference accuracy</th><th>candidate accuracy</th><th>drop</th>"
        f"<th>top-1 agreement</th><th>max |err|</th><th>mean |err|</th></tr>{rows}</table>"
    )
    parts += [_output(o, labels) for o in report.outputs]
    parts.append(_golden(golden))
    return '<section class="report">' + "".join(parts) + "</section>"


def manifest_report(m: Manifest) -> str:
    """The fragment for a package's manifest (its verification, labels and golden samples)."""
    return render_report(
        m.verification, title=f"{m.name} {m.version} ({m.mode})", labels=m.labels, golden=m.golden
    )


def report_document(fragment: str, title: str) -> str:
    """A standalone HTML page around a fragment (what ``edge-convert`` writes)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;margin:1.5em}}"
        f"{REPORT_CSS}</style></head><body>{fragment}</body></html>\n"
    )
