"""Bar charts as inline SVG: no JavaScript, no images, nothing fetched.

:func:`bar_chart` is a pure function from bars to SVG markup. Geometry uses
integer arithmetic only, so a bar of 2**63-1 microcents is placed exactly and
nothing is rounded through a float. A bar that is not zero is at least one
pixel tall, so a small value next to a large one still shows. Every bar
carries a ``<title>`` (its tooltip) with its exact value; the page puts the
same numbers in a table beside the chart, which is what a reader copies.
Colours are SVG attributes, not ``style``, so the page's Content Security
Policy can forbid inline styles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from .formatting import digits

#: Fill of bars above and below zero (the axis and labels use ``currentColor``).
POSITIVE = "#2b6cb0"
NEGATIVE = "#c05621"


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: a short axis ``label``, an exact ``value``, and its tooltip ``title``."""

    label: str
    value: int
    title: str


def bar_chart(
    bars: Sequence[Bar],
    *,
    caption: str,
    width: int = 960,
    height: int = 180,
    labels: int = 6,
    scale: Callable[[int], str] = digits,
) -> str:
    """SVG markup for ``bars`` in order, left to right, with a zero line.

    ``labels`` is how many axis labels at most (evenly spaced, first and last
    included); ``scale`` writes the largest and smallest values on the axis.
    """
    top, bottom = 18, 20  # room for the scale line above and the axis labels below
    plot = height - top - bottom
    values = [b.value for b in bars]
    hi = max([0, *values])
    lo = min([0, *values])
    span = (hi - lo) or 1
    zero = top + hi * plot // span
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(caption)}">',
        f"<title>{escape(caption)}</title>",
        f'<text x="0" y="12" class="scale" fill="currentColor">max {escape(scale(hi))}'
        + (f" · min {escape(scale(lo))}" if lo < 0 else "")
        + "</text>",
    ]
    n = len(bars)
    if n:
        slot = width // n
        gap = 1 if slot < 6 else 2
        for i, bar in enumerate(bars):
            x = i * width // n
            w = max(slot - gap, 1)
            h = abs(bar.value) * plot // span
            if bar.value and h == 0:
                h = 1  # never hide a non-zero bar
            y = zero - h if bar.value >= 0 else zero
            fill = POSITIVE if bar.value >= 0 else NEGATIVE
            out.append(
                f'<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}" '
                f'data-value="{bar.value}"><title>{escape(bar.title)}</title></rect>'
            )
        for i in _label_positions(n, labels):
            x = i * width // n + max(slot - gap, 1) // 2
            anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
            out.append(
                f'<text x="{x}" y="{height - 4}" class="axis" text-anchor="{anchor}" '
                f'fill="currentColor">{escape(bars[i].label)}</text>'
            )
    out.append(
        f'<line x1="0" y1="{zero}" x2="{width}" y2="{zero}" stroke="currentColor" '
        'stroke-width="1" class="zero"/>'
    )
    out.append("</svg>")
    return "".join(out)


def _label_positions(n: int, most: int) -> list[int]:
    """Up to ``most`` evenly spaced indexes of ``n`` bars, always the first and the last."""
    if n <= most:
        return list(range(n))
    if most <= 1:
        return [n - 1]
    return sorted({i * (n - 1) // (most - 1) for i in range(most)})
