"""Line charts drawn on the server as SVG: nothing to load, nothing to run in the browser.

Each series is a ``<polyline data-series=NAME>`` with one ``<circle>`` per point (its value in a
``<title>``), so a test (or a screen reader, through the table beside every chart) can count
series and points. Colours and lines are SVG presentation attributes, allowed by a strict
content security policy (no inline CSS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y) in data units
    labels: Sequence[str] = ()  # one per point, shown as its tooltip
    dashed: bool = False


def line_chart(
    title: str,
    series: Sequence[Series],
    x_range: tuple[float, float],
    x_ticks: Sequence[tuple[float, str]],
    y_label: str,
    chart_id: str,
    width: int = 720,
    height: int = 280,
    y_max: float | None = None,
    slots: Sequence[str] = (),
) -> Markup:
    """An SVG line chart. ``slots`` are series to come (named, empty ``<g>``), for views built
    before their data exists."""
    left, right, top, bottom = 56, 16, 16, 40
    legend = _legend_places([s.name for s in series], left, width - right)
    rows = 1 + max((row for _, row in legend), default=0)
    height += _LEGEND_ROW * (rows - 1)  # the plot keeps its size; the legend wraps below it
    bottom += _LEGEND_ROW * (rows - 1)
    w, h = width - left - right, height - top - bottom
    ys = [y for s in series for _, y in s.points]
    top_y = max([*ys, y_max or 0.0, 1e-9]) * 1.05
    x0, x1 = x_range
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return left + (x - x0) / span * w

    def py(y: float) -> float:
        return top + h - y / top_y * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart_id)}" class="chart" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'data-x0="{x0}" data-x1="{x1}" data-ymax="{top_y}" data-left="{left}" data-top="{top}" '
        f'data-w="{w}" data-h="{h}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#888"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top_y / 1.05 * frac
        parts.append(
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{_short(y)}</text>'
        )
    parts.append(
        f'<text x="12" y="{top + h / 2}" font-size="11" transform="rotate(-90 12 {top + h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for x, label in x_ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + h + 16}" text-anchor="middle" font-size="11">'
            f"{escape(label)}</text>"
        )
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(f'<g class="series" data-series="{escape(s.name)}">')
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{coords}"/>')
        for j, (x, y) in enumerate(s.points):
            tip = s.labels[j] if j < len(s.labels) else f"{_short(y)}"
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(s.name)}: {escape(tip)}</title></circle>"
            )
        parts.append("</g>")
    parts.extend(f'<g class="series slot" data-slot="{escape(name)}"></g>' for name in slots)
    for i, (s, (x, row)) in enumerate(zip(series, legend, strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        y = height - bottom + 26 + row * _LEGEND_ROW
        parts.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y + 9}" font-size="11">{escape(s.name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


#: Height of one row of the legend (px).
_LEGEND_ROW = 16


def _legend_places(names: Sequence[str], left: int, right: int) -> list[tuple[int, int]]:
    """Where each legend entry goes, (x, row): left to right, a new row when the next one would
    pass ``right`` (a name takes about 7 px a character at 11 px)."""
    out, x, row = [], left, 0
    for name in names:
        size = 14 + 7 * len(name)
        if x > left and x + size > right:
            x, row = left, row + 1
        out.append((x, row))
        x += size + 16
    return out


def _short(v: float) -> str:
    if abs(v) >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if abs(v) >= 1_000:
        return f"{v / 1_000:.1f}k"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"
