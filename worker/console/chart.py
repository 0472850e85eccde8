"""The queue page's chart: tickets opened per kind per day, as stacked bars.

Only geometry is computed here (numbers and the labels to show); the template writes the
SVG, so every label goes through the same escaping as the rest of the page.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconcile.views import KINDS, DailyCounts

# One colour per ticket kind, in reconcile's kind order; distinguishable on white and
# for the common colour-vision deficiencies (Okabe-Ito, then greys).
PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00",
    "#CC79A7", "#F0E442", "#000000", "#999999",
)  # fmt: skip
COLOURS = dict(zip(KINDS, PALETTE, strict=False))
OTHER = "#666666"

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 28, 8, 10, 22


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_bottom: int
    plot_right: int
    peak: int
    segments: list[Segment]
    ticks: list[Tick]
    legend: list[tuple[str, str, int]]  # (kind, colour, total)
    summary: str
    days: list[str]
    rows: list[tuple[str, list[int]]]  # (kind, counts per day): the same data as a table


def build(daily: DailyCounts) -> Chart:
    n = max(len(daily.days), 1)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1.0)
    peak = max(daily.peak_day, 1)
    segments: list[Segment] = []
    for i, day in enumerate(daily.days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = float(HEIGHT - BOTTOM)
        for kind, counts in daily.counts.items():
            count = counts[i]
            if not count:
                continue
            h = plot_h * count / peak
            base -= h
            segments.append(
                Segment(
                    round(x, 1),
                    round(base, 1),
                    round(bar_w, 1),
                    round(h, 1),
                    COLOURS.get(kind, OTHER),
                    f"{day.isoformat()}: {count} {kind}",
                )
            )
    ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 1), day.strftime("%d %b"))
        for i, day in enumerate(daily.days)
        if (len(daily.days) - 1 - i) % 2 == 0
    ]
    legend = [(k, COLOURS.get(k, OTHER), sum(c)) for k, c in daily.counts.items()]
    span = f"{daily.days[0].isoformat()} to {daily.days[-1].isoformat()}" if daily.days else ""
    summary = (
        f"{daily.total} ticket(s) opened {span}; busiest day {daily.peak_day}"
        if daily.total
        else f"no tickets opened {span}"
    )
    return Chart(
        WIDTH,
        HEIGHT,
        LEFT,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        daily.peak_day,
        segments,
        ticks,
        legend,
        summary,
        [d.isoformat() for d in daily.days],
        list(daily.counts.items()),
    )
