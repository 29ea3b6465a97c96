"""Subscriptions over their life: creation, discounts, cancellation, pausing and
resuming, and what happens at a period's end (renewal, trial end).

Item changes and their prorations are in :mod:`prorations`; what runs when time
passes (renewals, retries, expiry) is chosen by :mod:`timeline`, and this module
says what each of those steps does.  Time always comes from the customer's test
clock when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import collection, discounts, invoicing, methods
from .clock import DAY, next_period_end
from .discounts import Redemption
from .errors import StripeError, invalid
from .fixtures import template
from .ids import new_id
from .invoicing import DRAFT_SECONDS, LineSpec
from .items import (
    ItemSpec,
    cycle_lines,
    interval_of,
    new_item,
    pending_item_lines,
    period_of,
    product_name,
)
from .sandbox import Sandbox
from .store import Obj, snapshot

INCOMPLETE_EXPIRY = 23 * 3600
TRIAL_WARNING = 3 * DAY
LIVE_STATUSES = ("active", "past_due", "trialing", "unpaid")
ENDED_STATUSES = ("canceled", "incomplete_expired")


@dataclass
class NewSubscription:
    """What ``POST /v1/subscriptions`` (or a completed checkout) asks for."""

    items: list[ItemSpec]
    payment_behavior: str = "allow_incomplete"
    default_payment_method: str | None = None
    trial_end: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    cancel_at_period_end: bool = False
    description: str | None = None
    missing_pm_behavior: str = "create_invoice"
    save_default_payment_method: str = "off"
    redemptions: list[Redemption] = field(default_factory=list)


def _collect(sb: Sandbox, invoice: Obj, now: int, *, off_session: bool) -> StripeError | None:
    if invoice["status"] != "open":
        return None
    return collection.attempt(sb, invoice, now, automatic=True, off_session=off_session)


# -- create ---------------------------------------------------------------------


def _precheck(sb: Sandbox, request: NewSubscription, pm_id: str | None) -> None:
    if request.trial_end is None and request.payment_behavior != "default_incomplete" and not pm_id:
        raise invalid(
            "This customer has no attached payment source or default payment "
            "method. Please consider adding a default payment method.",
            code="resource_missing",
        )
    if request.payment_behavior == "error_if_incomplete" and request.trial_end is None and pm_id:
        # The subscription is not created at all when its first payment would not succeed.
        card = methods.card_of(sb, pm_id)
        if card is not None and card.three_d_secure:
            raise methods.card_error("authentication_required")
        decline = methods.next_decline(sb, pm_id, consume=False)
        if decline is not None:
            methods.next_decline(sb, pm_id)
            raise methods.card_error(decline)


def create(sb: Sandbox, customer: Obj, request: NewSubscription) -> Obj:
    now = sb.now(customer["test_clock"])
    currency = request.items[0].price["currency"]
    pm_id = request.default_payment_method or customer["invoice_settings"]["default_payment_method"]
    _precheck(sb, request, pm_id)
    trial_end = request.trial_end
    sub_id = new_id("sub")
    anchor = trial_end or now
    sub = template("subscription")
    sub_items = []
    for spec in request.items:
        interval, count = interval_of(spec.price)
        end = trial_end or next_period_end(anchor, now, interval, count)
        sub_items.append(new_item(sub_id, spec, now, end))
    invoice_id = new_id("in")
    sub.update(
        {
            "id": sub_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
            "billing_cycle_anchor": anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": {
                "type": "flexible",
                "flexible": {"proration_discounts": "included"},
                "updated_at": now,
            },
            "billing_schedules": [],
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": currency,
            "customer": customer["id"],
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": request.default_payment_method,
            "default_source": None,
            "default_tax_rates": [],
            "description": request.description,
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": {"type": "self"},
            },
            "items": {
                "object": "list",
                "data": sub_items,
                "has_more": False,
                "total_count": len(sub_items),
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "latest_invoice": invoice_id,
            "livemode": False,
            "managed_payments": None,
            "metadata": request.metadata,
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": request.save_default_payment_method,
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "trialing" if trial_end else "incomplete",
            "test_clock": customer["test_clock"],
            "transfer_data": None,
            "trial_end": trial_end,
            "trial_start": now if trial_end else None,
            "trial_settings": {
                "end_behavior": {"missing_payment_method": request.missing_pm_behavior}
            },
        }
    )
    if request.cancel_at_period_end:
        schedule_cancel(sub, at_period_end=True, now=now)
    sb.store.add("subscription", sub)
    for redemption in request.redemptions:
        discount = discounts.redeem(
            sb, redemption, start=now, customer=customer["id"], subscription=sub_id
        )
        sub["discounts"].append(discount["id"])
    sb.events.emit("customer.subscription.created", sub)
    if trial_end:
        lines = [
            LineSpec(
                amount=0,
                quantity=s.quantity or 0,
                price=s.price,
                subscription_item=i["id"],
                period_start=now,
                period_end=trial_end,
                description=f"Trial period for {product_name(sb, s.price)}",
            )
            for s, i in zip(request.items, sub_items, strict=True)
        ]
    else:
        lines = cycle_lines(sb, sub_items)
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_create",
        lines=lines,
        period_start=now,
        period_end=now,
        created=now,
        currency=currency,
        invoice_id=invoice_id,
        applied_discounts=discounts.active_on(sb, sub, now),
    )
    invoicing.finalize(sb, invoice, now)
    if invoice["amount_due"] == 0:
        collection.mark_paid(sb, invoice, now)
    elif request.payment_behavior != "default_incomplete":
        # The customer is subscribing right now: a card that needs 3D Secure asks
        # for it (invoice.payment_action_required) instead of being declined.
        _collect(sb, invoice, now, off_session=False)
    return sub


# -- update ---------------------------------------------------------------------


def replace_discounts(sb: Sandbox, sub: Obj, redemptions: list[Redemption], now: int) -> None:
    """``discounts=[...]`` on an update replaces the set; ``discounts=""`` clears it."""
    kept = {r.promotion_code["id"] if r.promotion_code else r.coupon["id"]: r for r in redemptions}
    remaining = []
    for discount_id in sub["discounts"]:
        discount = sb.store.get("discount", discount_id)
        key = discount["promotion_code"] or discount["source"]["coupon"]
        if key in kept:
            kept.pop(key)
            remaining.append(discount_id)
        else:
            sb.events.emit("customer.discount.deleted", discount)
    for redemption in kept.values():
        discount = discounts.redeem(
            sb, redemption, start=now, customer=sub["customer"], subscription=sub["id"]
        )
        remaining.append(discount["id"])
    sub["discounts"] = remaining


def drop_finished_discounts(sb: Sandbox, sub: Obj, at: int) -> None:
    """A used ``once`` coupon or an elapsed ``repeating`` one leaves the subscription."""
    keep = discounts.active_on(sb, sub, at)
    for discount_id in sub["discounts"]:
        if discount_id not in keep:
            sb.events.emit("customer.discount.deleted", sb.store.get("discount", discount_id))
    sub["discounts"] = keep


# -- cancel / pause / resume ------------------------------------------------


def schedule_cancel(sub: Obj, *, at_period_end: bool, now: int, at: int | None = None) -> None:
    """``cancel_at_period_end`` / ``cancel_at``: set, or unset to keep the subscription."""
    end = at if at is not None else (period_of(sub)[1] if at_period_end else None)
    sub["cancel_at"] = end
    sub["cancel_at_period_end"] = bool(end is not None and end == period_of(sub)[1])
    sub["canceled_at"] = now if end is not None else None
    sub["cancellation_details"]["reason"] = "cancellation_requested" if end is not None else None


def cancel_now(
    sb: Sandbox, sub: Obj, now: int, comment: str | None = None, feedback: str | None = None
) -> Obj:
    sub.update(
        {
            "status": "canceled",
            "canceled_at": now,
            "ended_at": now,
            "cancel_at": None,
            "cancel_at_period_end": False,
        }
    )
    sub["cancellation_details"] = {
        "comment": comment,
        "feedback": feedback,
        "reason": "cancellation_requested",
    }
    sb.events.emit("customer.subscription.deleted", sub)
    collection.end_schedule(sb, sub, now)
    return sub


def resume(sb: Sandbox, sub: Obj, now: int) -> Obj:
    if sub["status"] != "paused":
        raise invalid(
            "Only paused subscriptions can be resumed. To undo a scheduled "
            "cancellation, update the subscription with cancel_at_period_end=false."
        )
    customer = sb.store.get("customer", sub["customer"])
    before = snapshot(sub)
    # billing_cycle_anchor=now (the default): a new period starts and is billed at once.
    for item in sub["items"]["data"]:
        interval, count = interval_of(item["price"])
        item["current_period_start"] = now
        item["current_period_end"] = next_period_end(now, now, interval, count)
    sub["billing_cycle_anchor"] = now
    sub["status"] = "active"
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_cycle",
        lines=cycle_lines(sb, sub["items"]["data"]),
        period_start=now,
        period_end=now,
        created=now,
        currency=sub["currency"],
        applied_discounts=discounts.active_on(sb, sub, now),
    )
    sub["latest_invoice"] = invoice["id"]
    sb.events.emit("customer.subscription.resumed", sub)
    sb.events.emit(
        "customer.subscription.updated",
        sub,
        {
            "status": before["status"],
            "items": before["items"],
            "latest_invoice": before["latest_invoice"],
        },
    )
    invoicing.finalize(sb, invoice, now)
    if invoice["amount_due"] == 0:
        collection.mark_paid(sb, invoice, now)
    else:
        _collect(sb, invoice, now, off_session=True)
    return sub


# -- time passing ---------------------------------------------------------------


def _trial_ends_without_payment_method(sb: Sandbox, sub: Obj, at: int) -> bool:
    """``trial_settings.end_behavior.missing_payment_method``; True when it ended things."""
    behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
    if behavior == "cancel":
        collection.end_subscription(sb, sub, at, reason="cancellation_requested")
        return True
    if behavior == "pause":
        sub["status"] = "paused"
        sb.events.emit("customer.subscription.paused", sub)
        sb.events.emit("customer.subscription.updated", sub, {"status": "trialing"})
        return True
    return False  # create_invoice: bill it anyway; the payment fails, it goes past_due


def renew(sb: Sandbox, sub: Obj, at: int) -> None:
    """A period ends: the next one starts and its invoice is drafted.

    Stripe leaves the renewal invoice in draft for about an hour before it
    finalizes and charges it (:func:`finalize_renewal`, run by the timeline).
    """
    customer = sb.store.get("customer", sub["customer"])
    before = snapshot(sub)
    old_start, old_end = period_of(sub)
    trial_ending = sub["status"] == "trialing"
    pm = sub["default_payment_method"] or customer["invoice_settings"]["default_payment_method"]
    if trial_ending and pm is None and _trial_ends_without_payment_method(sb, sub, at):
        return
    for item in sub["items"]["data"]:
        interval, count = interval_of(item["price"])
        item["current_period_start"] = old_end
        item["current_period_end"] = next_period_end(
            sub["billing_cycle_anchor"], old_end, interval, count
        )
    if trial_ending:
        sub["status"] = "active"
    drop_finished_discounts(sb, sub, at)
    # Metered items bill the usage of the period that ended (none in a trial).
    lines = cycle_lines(
        sb,
        sub["items"]["data"],
        customer=customer["id"],
        ended=None if trial_ending else (old_start, old_end),
    )
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_cycle",
        lines=lines + pending_item_lines(sb, sub),
        period_start=old_start,
        period_end=old_end,
        created=at,
        currency=sub["currency"],
        applied_discounts=discounts.active_on(sb, sub, at),
        finalizes_at=at + DRAFT_SECONDS,
    )
    sub["latest_invoice"] = invoice["id"]
    previous: dict[str, Any] = {
        "items": before["items"],
        "latest_invoice": before["latest_invoice"],
    }
    if trial_ending:
        previous["status"] = "trialing"
    if before["discounts"] != sub["discounts"]:
        previous["discounts"] = before["discounts"]
    sb.events.emit("customer.subscription.updated", sub, previous)


def finalize_renewal(sb: Sandbox, invoice: Obj, at: int) -> None:
    """About an hour after it was drafted, a renewal invoice is finalized and collected."""
    invoicing.finalize(sb, invoice, at)
    if invoice["amount_due"] == 0:
        collection.mark_paid(sb, invoice, at)
        return
    sub = invoicing.subscription_of(sb, invoice)
    if sub is not None and sub["status"] == "unpaid":
        return  # Stripe stops attempting payments for unpaid subscriptions
    if invoice["auto_advance"]:
        collection.attempt(sb, invoice, at, automatic=True, off_session=True)


def end_trial_now(sb: Sandbox, sub: Obj, now: int) -> None:
    """``trial_end=now``: the trial stops and a new billing cycle starts immediately."""
    sub["trial_end"] = now
    sub["billing_cycle_anchor"] = now
    for item in sub["items"]["data"]:
        item["current_period_end"] = now
    renew(sb, sub, now)
    invoice = sb.store.maybe("invoice", sub["latest_invoice"])
    if invoice is not None and invoice["status"] == "draft":
        # Ended through the API, the trial's invoice is billed at once.
        finalize_renewal(sb, invoice, now)


def expire_incomplete(sb: Sandbox, sub: Obj, at: int) -> None:
    """23 hours without a paid first invoice: ``incomplete_expired``, the invoice voided."""
    invoice = sb.store.maybe("invoice", sub["latest_invoice"])
    before = {"status": sub["status"]}
    sub["status"] = "incomplete_expired"
    sub["ended_at"] = at
    if invoice and invoice["status"] == "open":
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = at
        invoicing.cancel_collection(sb, invoice, at)
        sb.events.emit("invoice.voided", invoice)
    sb.events.emit("customer.subscription.updated", sub, before)
    sb.events.emit("customer.subscription.deleted", sub)
