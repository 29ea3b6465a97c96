"""Who a Stripe object belongs to: the member behind its customer."""

from __future__ import annotations

from collections.abc import Mapping

from shared.billing_events import Member
from shared.broker.handlers import Context, Refetch


async def resolve(ctx: Context, customer_id: str, metadata: Mapping[str, str]) -> Member | None:
    """The member of ``customer_id``: from our customers row, else the user id
    the object carries in its metadata (we put it on every subscription), else
    the customer as Stripe has it (its metadata names the user).

    None for a customer that is no member's (made outside the product): its
    objects are still mirrored, but there is nobody to announce facts about.
    """
    row = await ctx.conn.fetchrow(
        "SELECT user_id, email FROM customers WHERE stripe_customer_id = $1", customer_id
    )
    if row is not None:
        return Member(user_id=row["user_id"], customer_id=customer_id, email=row["email"])
    user_id = metadata.get("user_id")
    if user_id:
        return Member(user_id=user_id, customer_id=customer_id, email=None)
    fetched = ctx.fetched
    if fetched is None:
        # Never guessed: ask Stripe whose customer this is.
        raise Refetch("customer", customer_id)
    if fetched.get("object") == "customer":
        user_id = (fetched.get("metadata") or {}).get("user_id")
        if user_id:
            return Member(user_id=user_id, customer_id=customer_id, email=fetched.get("email"))
    return None
