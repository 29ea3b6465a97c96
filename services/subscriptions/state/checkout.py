"""Subscription checkouts: the session's outcome, as Stripe reported it."""

from __future__ import annotations

from services.subscriptions.state import members
from services.subscriptions.state.snapshots import CheckoutSessionSnapshot
from shared import mirror
from shared.broker.handlers import Context
from shared.clock import from_unix

_UPSERT = """
INSERT INTO checkout_sessions AS c (
    stripe_session_id, user_id, stripe_customer_id, status, payment_status, plan, interval,
    url, expires_at, stripe_subscription_id, last_event_id,
    version_created, version_progress, version_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (stripe_session_id) DO UPDATE SET
    stripe_customer_id = COALESCE(EXCLUDED.stripe_customer_id, c.stripe_customer_id),
    status = EXCLUDED.status,
    payment_status = EXCLUDED.payment_status,
    url = EXCLUDED.url,
    expires_at = COALESCE(EXCLUDED.expires_at, c.expires_at),
    stripe_subscription_id = COALESCE(EXCLUDED.stripe_subscription_id, c.stripe_subscription_id),
    last_event_id = EXCLUDED.last_event_id,
    version_created = EXCLUDED.version_created,
    version_progress = EXCLUDED.version_progress,
    version_digest = EXCLUDED.version_digest,
    updated_at = now()
"""


async def apply(
    ctx: Context, snapshot: CheckoutSessionSnapshot, *, event_id: str, created: int
) -> None:
    if snapshot.mode != "subscription":
        return  # booking payments consume their own checkouts on their own queue
    state = snapshot.model_dump(mode="json")
    verdict = await mirror.decide(
        ctx,
        kind="checkout_session",
        table="checkout_sessions",
        id_column="stripe_session_id",
        stripe_id=snapshot.id,
        version=mirror.Version.of(created, *snapshot.progress()),
        state_digest=mirror.digest(state),
    )
    if verdict is not mirror.Verdict.APPLY:
        return
    user_id = snapshot.metadata.get("user_id") or snapshot.client_reference_id
    if not user_id and snapshot.customer:
        member = await members.resolve(ctx, snapshot.customer, snapshot.metadata)
        user_id = member.user_id if member else None
    await ctx.conn.execute(
        _UPSERT,
        snapshot.id,
        user_id or "",
        snapshot.customer,
        snapshot.status or "open",
        snapshot.payment_status,
        snapshot.metadata.get("plan"),
        snapshot.metadata.get("interval"),
        snapshot.url,
        from_unix(snapshot.expires_at) if snapshot.expires_at else None,
        snapshot.subscription,
        event_id,
        from_unix(created),
        list(snapshot.progress()),
        mirror.digest(state),
    )
