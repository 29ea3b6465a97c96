"""``POST /v1/invoices/create_preview``: the invoice a subscription change would produce.

Nothing is stored or emitted.  The preview is computed with the very functions
the real update uses (:func:`prorations.planned_items`,
:func:`prorations.proration_specs`), so what it shows is what the update then
invoices, given the same ``proration_date``:

* ``proration_behavior=always_invoice``: the invoice made at once, the
  prorations (credit for unused time, charge for the remaining time of the new
  price) plus anything already pending;
* ``create_prorations`` (the default): the next renewal, the new items for the
  next period plus the prorations (a metered item: its usage so far);
* ``none``: the next renewal at the new price, nothing prorated;
* a new billing interval (monthly to yearly): the invoice made at once for the
  new period, less the credit for the old one's unused time.

Its id starts with ``upcoming_in`` and its lines with ``il_tmp``, as Stripe's do.
"""

from __future__ import annotations

from typing import Any

from . import discounts, items, lifecycle, prorations
from .clock import next_period_end
from .errors import invalid
from .invoicing import LineSpec, build
from .params import Params, parse_bool, parse_int
from .sandbox import Sandbox
from .store import Obj, snapshot

PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")


def _next_period(sub: Obj, chosen: list[Obj]) -> list[Obj]:
    """The items as they will stand in the period after the current one."""
    _, end = items.period_of(sub)
    upcoming = snapshot(chosen)
    for item in upcoming:
        interval, count = items.interval_of(item["price"])
        item["current_period_start"] = end
        item["current_period_end"] = next_period_end(
            sub["billing_cycle_anchor"], end, interval, count
        )
    return upcoming


def _proration_lines(sb: Sandbox, sub: Obj, new_items: list[Obj], when: int) -> list[LineSpec]:
    _, end = items.period_of(sub)
    specs = prorations.credits_and_charges(sb, sub, sub["items"]["data"], new_items, when)
    return [
        LineSpec(
            amount=spec.amount,
            description=spec.description,
            period_start=when,
            period_end=end,
            quantity=spec.quantity,
            price=spec.price,
            proration=True,
        )
        for spec in specs
    ]


def _planned(sb: Sandbox, sub: Obj, details: dict[str, Any]) -> tuple[list[Obj], bool]:
    """The items after the previewed change, and whether there is a change at all."""
    changes = details.get("items") or []
    if isinstance(changes, dict):
        changes = list(changes.values())
    if not changes:
        return snapshot(sub["items"]["data"]), False
    planned = prorations.planned_items(sb, sub, [c if isinstance(c, dict) else {} for c in changes])
    return planned, True


def preview_subscription(sb: Sandbox, sub: Obj, details: dict[str, Any], now: int) -> Obj:
    customer = sb.store.get("customer", sub["customer"])
    behavior = details.get("proration_behavior") or "create_prorations"
    if behavior not in PRORATION_BEHAVIORS:
        raise invalid(
            f"Invalid proration_behavior: {behavior}",
            param="subscription_details[proration_behavior]",
        )
    when = parse_int(details.get("proration_date"), "subscription_details[proration_date]") or now
    new_items, changing = _planned(sb, sub, details)
    prorating = changing and prorations.prorates(sub, behavior)
    credits = _proration_lines(sb, sub, new_items, when) if prorating else []
    pending = items.pending_item_lines(sb, sub)
    start, end = items.period_of(sub)
    cancels = parse_bool(
        details.get("cancel_at_period_end"), "subscription_details[cancel_at_period_end]"
    )
    new_interval = (
        changing
        and prorations.changes_interval(sub["items"]["data"], new_items)
        and sub["status"] in ("active", "past_due")
    )
    if new_interval:
        # A new billing interval starts a period now and bills it at once.
        prorations.restart_period(new_items, when)
        lines = items.cycle_lines(sb, new_items) + credits + pending
        created, reason, period = when, "subscription_update", (when, when)
    elif behavior == "always_invoice" and changing:
        created, reason, period = when, "subscription_update", (when, when)
        lines = credits + pending
    elif cancels or sub["cancel_at_period_end"]:
        lines, created, reason, period = credits + pending, end, "subscription_cycle", (end, end)
    else:
        upcoming = _next_period(sub, new_items)
        # Metered items: the usage counted so far in the current period.
        lines = (
            items.cycle_lines(sb, upcoming, customer=customer["id"], ended=(start, end))
            + credits
            + pending
        )
        created, reason, period = end, "subscription_cycle", (start, end)
    invoice = build(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason=reason,
        lines=lines,
        period_start=period[0],
        period_end=period[1],
        created=created,
        currency=sub["currency"],
        applied_discounts=discounts.active_on(sb, sub, created),
        preview=True,
    )
    if prorating:
        invoice["parent"]["subscription_details"]["subscription_proration_date"] = when
    invoice["next_payment_attempt"] = None if reason == "subscription_update" else created + 3600
    return invoice


def create_preview(sb: Sandbox, p: Params) -> Obj:
    sub_id = p.str("subscription")
    if sub_id:
        sub = sb.store.get("subscription", sub_id, "subscription")
        if p.str("customer") and p.str("customer") != sub["customer"]:
            raise invalid(
                "The customer does not match the subscription's customer.", param="customer"
            )
        if sub["status"] in lifecycle.ENDED_STATUSES:
            raise invalid(
                f"No upcoming invoices for customer: {sub['customer']}",
                code="invoice_upcoming_none",
            )
        return preview_subscription(sb, sub, p.dict("subscription_details"), sb.time_of(sub))
    customer_id = p.str("customer")
    if not customer_id:
        raise invalid(
            "You must provide at least one of customer, customer_account or subscription.",
            param="customer",
        )
    customer = sb.store.get("customer", customer_id, "customer")
    live = [
        s
        for s in sb.store.all("subscription")
        if s["customer"] == customer["id"] and s["status"] in lifecycle.LIVE_STATUSES
    ]
    if not live:
        raise invalid(
            f"No upcoming invoices for customer: {customer['id']}", code="invoice_upcoming_none"
        )
    sub = live[-1]
    return preview_subscription(sb, sub, p.dict("subscription_details"), sb.time_of(sub))
