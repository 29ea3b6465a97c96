"""MRR and ARR from the mirrored state, per currency.

A subscription counts while it is ``active`` or ``past_due`` (not yet lost)
and has not reached a ``cancel_at`` (one set to cancel at period end counts
until it ends); trials count nothing. Its monthly amount is its price times
quantity, a yearly price as 1/12. Discounts in force at ``at`` come off: a
percentage of it, or a fixed amount per invoice (1/12 of it for a yearly
price); a ``once`` coupon changes one invoice, not the recurring revenue.
ARR is 12 x MRR. Figures are rounded to the minor unit once, per currency.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import asyncpg

from services.subscriptions import contract

WINDOW = timedelta(days=30)

_SUBSCRIPTIONS = """
SELECT stripe_subscription_id, status, interval, unit_amount, quantity, currency, cancel_at,
       activated_at, ended_at, canceled_at
FROM subscriptions
"""
_DISCOUNTS = """
SELECT d.stripe_subscription_id, d.starts_at, d.ends_at, c.percent_off, c.amount_off, c.duration
FROM discounts d JOIN coupons c USING (stripe_coupon_id)
WHERE NOT d.deleted AND d.stripe_subscription_id IS NOT NULL
"""
COUNTED = ("active", "past_due")


def _monthly(row: asyncpg.Record | dict[str, Any], discounts: list[Any], at: datetime) -> Fraction:
    months = 12 if row["interval"] == "year" else 1
    amount = Fraction(row["unit_amount"] * row["quantity"], months)
    for d in discounts:
        if d["duration"] == "once":
            continue
        if d["starts_at"] is not None and d["starts_at"] > at:
            continue
        if d["ends_at"] is not None and d["ends_at"] <= at:
            continue
        if d["percent_off"] is not None:
            amount *= 1 - Fraction(str(d["percent_off"])) / 100
        elif d["amount_off"] is not None:
            amount -= Fraction(d["amount_off"], months)
    return max(amount, Fraction(0))


def _rounded(value: Fraction) -> int:
    return int(value + Fraction(1, 2))  # half up: non-negative amounts


async def compute(pool: asyncpg.Pool[Any], at: datetime) -> contract.Revenue:
    rows = await pool.fetch(_SUBSCRIPTIONS)
    by_sub: dict[str, list[Any]] = defaultdict(list)
    for d in await pool.fetch(_DISCOUNTS):
        by_sub[d["stripe_subscription_id"]].append(d)
    mrr: dict[str, Fraction] = defaultdict(Fraction)
    active = trialing = new = churned = 0
    for r in rows:
        if r["status"] == "active":
            active += 1
        elif r["status"] == "trialing":
            trialing += 1
        if r["activated_at"] is not None and at - WINDOW < r["activated_at"] <= at:
            new += 1
        ended = r["ended_at"] or r["canceled_at"]
        if r["status"] == "canceled" and ended is not None and at - WINDOW < ended <= at:
            churned += 1
        if r["status"] not in COUNTED or r["unit_amount"] is None or r["currency"] is None:
            continue
        if r["cancel_at"] is not None and r["cancel_at"] <= at:
            continue
        mrr[r["currency"]] += _monthly(r, by_sub[r["stripe_subscription_id"]], at)
    return contract.Revenue(
        at=at,
        by_currency=[
            contract.CurrencyRevenue(currency=c, mrr=_rounded(v), arr=_rounded(v * 12))
            for c, v in sorted(mrr.items())
        ],
        active=active,
        trialing=trialing,
        new_last_30_days=new,
        churned_last_30_days=churned,
    )
