"""Time: unix seconds on the wire, timezone-aware datetimes for calendar maths.

Objects on a test clock live at the clock's ``frozen_time``; everything else
uses the real UTC wall clock, as Stripe does.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

DAY = 86_400


def wall_now() -> datetime:
    return datetime.now(UTC)


def to_ts(moment: datetime) -> int:
    return int(moment.timestamp())


def from_ts(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _add_months(moment: datetime, months: int) -> datetime:
    # Month arithmetic clamps to the month's last day (Jan 31 + 1 month = Feb 28/29),
    # which is how Stripe bills an anchor on the 31st.
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def add_interval(anchor_ts: int, interval: str, count: int) -> int:
    anchor = from_ts(anchor_ts)
    if interval == "day":
        return to_ts(anchor + timedelta(days=count))
    if interval == "week":
        return to_ts(anchor + timedelta(weeks=count))
    if interval == "month":
        return to_ts(_add_months(anchor, count))
    if interval == "year":
        return to_ts(_add_months(anchor, 12 * count))
    raise ValueError(f"unknown interval {interval}")


def next_period_end(anchor_ts: int, after_ts: int, interval: str, count: int) -> int:
    """First anchor-aligned boundary strictly after ``after_ts``.

    Periods are computed from the billing cycle anchor (not chained from the
    previous end) so an anchor on the 31st does not drift to the 28th forever.
    """
    step = 1
    while True:
        end = add_interval(anchor_ts, interval, count * step)
        if end > after_ts:
            return end
        step += 1
