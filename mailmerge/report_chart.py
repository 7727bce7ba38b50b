"""The HTML report's chart of messages sent over time per mailbox, as inline SVG.

Drawn here rather than by a charting library so the report stays one self-contained file with no
scripts. The input is an aggregate (messages per mailbox per time bucket), so the chart costs the
same for ten recipients or a million. Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

#: Bucket widths the chart chooses from, in seconds: a minute to a week.
BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400)
MAX_BARS = 60
PALETTE = ("#4f46e5", "#0d9488", "#ea580c", "#a21caf", "#0284c7", "#ca8a04", "#be123c", "#4d7c0f")
WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 42


def bucket_seconds(first: float, last: float) -> int:
    """The narrowest bucket that draws the period from ``first`` to ``last`` in at most MAX_BARS bars."""
    span = max(0.0, last - first)
    for size in BUCKETS:
        if span / size < MAX_BARS:
            return size
    return BUCKETS[-1] * math.ceil(span / (BUCKETS[-1] * MAX_BARS))


def mailbox_colours(mailboxes: Iterable[str]) -> dict[str, str]:
    return {mailbox: PALETTE[index % len(PALETTE)] for index, mailbox in enumerate(mailboxes)}


def _nice_ceiling(value: int) -> int:
    """1, 2, 2.5 or 5 times a power of ten, at least ``value``: round numbers on the y axis."""
    if value <= 4:
        return 4
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return int(step * power)
    return 10 * power  # pragma: no cover - the loop always returns


def _label(epoch: float, size: int, previous_day: str | None) -> tuple[str, str]:
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    day = moment.strftime("%d %b")
    if size >= 86_400:
        return day, day
    time_text = moment.strftime("%H:%M")
    return (time_text if day == previous_day else f"{day} {time_text}"), day


def sends_chart(points: Sequence[tuple[str, int, int]], size: int, colours: dict[str, str]) -> Markup:
    """A stacked bar chart of ``(mailbox, bucket, messages)`` where bucket = time // size."""
    if not points:
        return Markup("")
    first = min(b for _, b, _ in points)
    last = max(b for _, b, _ in points)
    bars = last - first + 1
    stacks: dict[int, dict[str, int]] = {}
    for mailbox, bucket, count in points:
        stacks.setdefault(bucket, {})[mailbox] = stacks.get(bucket, {}).get(mailbox, 0) + count
    top = _nice_ceiling(max(sum(stack.values()) for stack in stacks.values()))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / bars
    bar_w = max(1.0, slot * 0.78)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="Messages sent per {escape(_unit(size))}, by mailbox" '
        'xmlns="http://www.w3.org/2000/svg" font-family="inherit" font-size="12">'
    ]
    for step in range(5):
        value = top * step / 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{"#94a3b8" if step == 0 else "#e2e8f0"}" stroke-width="1"/>'
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#64748b">{value:,.0f}</text>'
        )
    order = {mailbox: index for index, mailbox in enumerate(colours)}
    for bucket in range(first, last + 1):
        x = LEFT + (bucket - first) * slot + (slot - bar_w) / 2
        y = TOP + plot_h
        start = datetime.fromtimestamp(bucket * size, tz=UTC).strftime("%Y-%m-%d %H:%M")
        for mailbox, count in sorted(stacks.get(bucket, {}).items(), key=lambda i: order.get(i[0], 0)):
            height = plot_h * count / top
            y -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{height:.1f}" '
                f'fill="{colours.get(mailbox, PALETTE[0])}"><title>{escape(mailbox)}: {count:,} '
                f"sent, {start} UTC (+{escape(_unit(size))})</title></rect>"
            )
    every = max(1, math.ceil(bars / 8))
    previous_day: str | None = None
    for bucket in range(first, last + 1, every):
        text, previous_day = _label(bucket * size, size, previous_day)
        x = LEFT + (bucket - first) * slot + slot / 2
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" fill="#64748b">'
            f"{escape(text)}</text>"
        )
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end" fill="#94a3b8">'
        f"UTC · one bar per {escape(_unit(size))}</text></svg>"
    )
    return Markup("".join(parts))  # noqa: S704 - built above from escaped text and numbers


def _unit(size: int) -> str:
    for seconds, name in ((604_800, "week"), (86_400, "day"), (3600, "hour"), (60, "minute")):
        if size % seconds == 0:
            amount = size // seconds
            return name if amount == 1 else f"{amount} {name}s"
    return f"{size} seconds"
