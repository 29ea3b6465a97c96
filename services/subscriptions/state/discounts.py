"""Discounts on subscriptions, and their coupons: what revenue figures take off."""

from __future__ import annotations

from services.subscriptions.state.snapshots import CouponSnapshot, DiscountSnapshot
from shared.broker.handlers import Context, Refetch
from shared.clock import from_unix
from shared.db import DbConnection


async def store_coupon(conn: DbConnection, coupon: CouponSnapshot) -> None:
    await conn.execute(
        "INSERT INTO coupons (stripe_coupon_id, percent_off, amount_off, currency, duration,"
        " duration_in_months) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (stripe_coupon_id) DO UPDATE SET percent_off = EXCLUDED.percent_off,"
        " amount_off = EXCLUDED.amount_off, currency = EXCLUDED.currency,"
        " duration = EXCLUDED.duration, duration_in_months = EXCLUDED.duration_in_months,"
        " updated_at = now()",
        coupon.id,
        coupon.percent_off,
        coupon.amount_off,
        coupon.currency,
        coupon.duration,
        coupon.duration_in_months,
    )


async def apply(ctx: Context, snapshot: DiscountSnapshot, *, deleted: bool, created: int) -> None:
    coupon_id = snapshot.coupon_id()
    if coupon_id is None:
        return
    known = await ctx.conn.fetchval(
        "SELECT true FROM coupons WHERE stripe_coupon_id = $1", coupon_id
    )
    if not known:
        if snapshot.coupon is not None:
            await store_coupon(ctx.conn, CouponSnapshot.model_validate(snapshot.coupon))
        elif ctx.fetched is not None and ctx.fetched.get("object") == "coupon":
            await store_coupon(ctx.conn, CouponSnapshot.model_validate(ctx.fetched))
        else:
            raise Refetch("coupon", coupon_id)
    # A discount never changes once created (its end is fixed by the coupon at
    # the start); it can only be deleted, and a deletion is final. So the row
    # is a monotone merge that any order of events reaches alike: no version
    # to compare, unlike the mirrored objects (shared/mirror.py).
    await ctx.conn.execute(
        "INSERT INTO discounts (stripe_discount_id, stripe_subscription_id, stripe_coupon_id,"
        " promotion_code, starts_at, ends_at, deleted, last_event_created)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (stripe_discount_id) DO UPDATE SET"
        " deleted = discounts.deleted OR EXCLUDED.deleted,"
        " ends_at = COALESCE(discounts.ends_at, EXCLUDED.ends_at),"
        " last_event_created = GREATEST(discounts.last_event_created, EXCLUDED.last_event_created)",
        snapshot.id,
        snapshot.subscription,
        coupon_id,
        snapshot.promotion_code,
        from_unix(snapshot.start) if snapshot.start else None,
        from_unix(snapshot.end) if snapshot.end else None,
        deleted,
        from_unix(created),
    )
