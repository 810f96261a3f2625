"""Server-rendered SVG charts: a device's rate and latency over the last hour.

Plain SVG text (no charting library, no script): the page stays readable without JavaScript
and a live update swaps the whole chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

COLOURS = ("#4a6fd4", "#d4574a", "#3a9a4a")


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float | None]]]],
    *,
    start: float,
    end: float,
    unit: str,
    width: int = 640,
    height: int = 180,
) -> str:
    """Lines of ``(t, value)`` points between ``start`` and ``end`` (None: a gap)."""
    pad_l, pad_r, pad_t, pad_b = 48, 10, 22, 20
    values = [v for _, pts in series for _, v in pts if v is not None]
    top = max(values) if values else 1.0
    top = top * 1.1 if top > 0 else 1.0
    span = max(end - start, 1e-9)
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def x(t: float) -> float:
        return pad_l + (t - start) / span * plot_w

    def y(v: float) -> float:
        return pad_t + plot_h - v / top * plot_h

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">',
        f'<text x="{pad_l}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_r}" y2="{pad_t + plot_h}" '
        'stroke="#889"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + plot_h}" stroke="#889"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" font-size="10" text-anchor="end">{top:.3g}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h / 2}" font-size="10" text-anchor="end">'
        f"{escape(unit)}</text>",
        f'<text x="{pad_l}" y="{height - 4}" font-size="10">-{(end - start) / 60:.0f} min</text>',
        f'<text x="{width - pad_r}" y="{height - 4}" font-size="10" text-anchor="end">now</text>',
    ]
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for t, v in pts:
            if v is None or t < start:
                runs.append([])
                continue
            runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{" ".join(run)}"/>'
                )
        parts.append(
            f'<text x="{width - pad_r - 120 * (len(series) - i)}" y="14" font-size="11" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    if not values:
        parts.append(
            f'<text x="{pad_l + plot_w / 2}" y="{pad_t + plot_h / 2}" font-size="12" '
            'text-anchor="middle" fill="#889">no data yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
