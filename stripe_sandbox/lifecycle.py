"""Subscriptions over time: creation, item changes with proration, cancellation,
renewal, trial end, dunning retries and test clock advancement.

Time always comes from the customer's test clock when it has one, so a clock
advance replays exactly what Stripe would do at each instant, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import invoicing, payments
from .clock import DAY, from_ts, next_period_end
from .errors import StripeError, invalid
from .events import current_request
from .fixtures import template
from .ids import new_id
from .invoicing import LineSpec
from .sandbox import Sandbox
from .store import Obj, snapshot

INCOMPLETE_EXPIRY = 23 * 3600
TRIAL_WARNING = 3 * DAY
LIVE_STATUSES = ("active", "past_due", "trialing", "unpaid")


@dataclass
class ItemSpec:
    price: Obj
    quantity: int = 1
    metadata: dict[str, str] | None = None


def plan_from_price(price: Obj) -> dict[str, Any]:
    recurring = price["recurring"] or {}
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count"),
        "livemode": False,
        "metadata": dict(price["metadata"]),
        "meter": None,
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


def _item(sub_id: str, spec: ItemSpec, start: int, end: int) -> Obj:
    item = template("subscription_item")
    item.update(
        {
            "id": new_id("si", 14),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": start,
            "current_period_start": start,
            "current_period_end": end,
            "discounts": [],
            "metadata": dict(spec.metadata or {}),
            "plan": plan_from_price(spec.price),
            "price": snapshot(spec.price),
            "quantity": spec.quantity,
            "subscription": sub_id,
            "tax_rates": [],
        }
    )
    return item


def period_of(sub: Obj) -> tuple[int, int]:
    first = sub["items"]["data"][0]
    return int(first["current_period_start"]), int(first["current_period_end"])


def _interval(price: Obj) -> tuple[str, int]:
    recurring = price["recurring"] or {}
    return str(recurring.get("interval", "month")), int(recurring.get("interval_count", 1))


def _product_name(sb: Sandbox, price: Obj) -> str:
    product = sb.store.maybe("product", price["product"])
    return str(product["name"]) if product else str(price["product"])


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency.upper()}"


def _cycle_lines(sb: Sandbox, sub: Obj) -> list[LineSpec]:
    lines = []
    for item in sub["items"]["data"]:
        price = item["price"]
        interval, _ = _interval(price)
        amount = int(price["unit_amount"]) * int(item["quantity"])
        lines.append(
            LineSpec(
                amount=amount,
                quantity=item["quantity"],
                price=price,
                subscription_item=item["id"],
                period_start=item["current_period_start"],
                period_end=item["current_period_end"],
                description=(
                    f"{item['quantity']} \N{MULTIPLICATION SIGN} {_product_name(sb, price)}"
                    f" (at {_money(price['unit_amount'], price['currency'])} / {interval})"
                ),
            )
        )
    return lines


def _pending_item_lines(sb: Sandbox, sub: Obj) -> list[LineSpec]:
    lines = []
    for ii in reversed(sb.store.all("invoiceitem")):
        parent = ii.get("parent") or {}
        owner = (parent.get("subscription_details") or {}).get("subscription")
        if ii["invoice"] is None and owner == sub["id"]:
            price = sb.store.maybe("price", (ii["pricing"].get("price_details") or {}).get("price"))
            lines.append(
                LineSpec(
                    amount=ii["amount"],
                    description=ii["description"],
                    quantity=ii["quantity"],
                    price=price,
                    proration=ii["proration"],
                    invoice_item=ii["id"],
                    period_start=ii["period"]["start"],
                    period_end=ii["period"]["end"],
                )
            )
    return lines


def _collect(sb: Sandbox, invoice: Obj, now: int, automatic: bool) -> StripeError | None:
    if invoice["status"] != "open":
        return None
    return invoicing.pay(sb, invoice, now, automatic=automatic)


# -- create ---------------------------------------------------------------------


def create(
    sb: Sandbox,
    customer: Obj,
    items: list[ItemSpec],
    *,
    payment_behavior: str,
    default_payment_method: str | None,
    trial_end: int | None,
    metadata: dict[str, str],
    cancel_at_period_end: bool = False,
    description: str | None = None,
    missing_pm_behavior: str = "create_invoice",
) -> Obj:
    now = sb.now(customer["test_clock"])
    currency = items[0].price["currency"]
    pm_id = default_payment_method or customer["invoice_settings"]["default_payment_method"]
    if trial_end is None and payment_behavior != "default_incomplete" and pm_id is None:
        raise invalid(
            "This customer has no attached payment source or default payment "
            "method. Please consider adding a default payment method.",
            code="resource_missing",
        )
    if payment_behavior == "error_if_incomplete" and trial_end is None and pm_id:
        decline = payments.next_decline(sb, pm_id, consume=False)
        if decline is not None:
            payments.next_decline(sb, pm_id)
            raise payments.card_error(decline)
    sub_id = new_id("sub")
    anchor = trial_end or now
    sub = template("subscription")
    sub_items = []
    for spec in items:
        interval, count = _interval(spec.price)
        end = trial_end or next_period_end(anchor, now, interval, count)
        sub_items.append(_item(sub_id, spec, now, end))
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
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": now if cancel_at_period_end else None,
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": "cancellation_requested" if cancel_at_period_end else None,
            },
            "collection_method": "charge_automatically",
            "created": now,
            "currency": currency,
            "customer": customer["id"],
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": default_payment_method,
            "default_source": None,
            "default_tax_rates": [],
            "description": description,
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
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
            "metadata": metadata,
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
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
            "trial_settings": {"end_behavior": {"missing_payment_method": missing_pm_behavior}},
        }
    )
    sb.store.add("subscription", sub)
    sb.events.emit("customer.subscription.created", sub)
    if trial_end:
        lines = [
            LineSpec(
                amount=0,
                quantity=s.quantity,
                price=s.price,
                subscription_item=i["id"],
                period_start=now,
                period_end=trial_end,
                description=f"Trial period for {_product_name(sb, s.price)}",
            )
            for s, i in zip(items, sub_items, strict=True)
        ]
    else:
        lines = _cycle_lines(sb, sub)
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
    )
    invoicing.finalize(sb, invoice, now)
    if invoice["status"] == "paid" and sub["status"] == "incomplete":
        invoicing.set_subscription_status(sb, sub, "active")
    if payment_behavior != "default_incomplete":
        _collect(sb, invoice, now, automatic=False)
    return sub


# -- update ---------------------------------------------------------------------


def _proration_specs(
    sb: Sandbox, sub: Obj, old_items: list[Obj], new_items: list[Obj], when: int
) -> list[tuple[int, str, Obj, int]]:
    """(amount, description, price, quantity) for unused-time credits and new-price debits."""
    start, end = period_of(sub)
    total = max(1, end - start)
    remaining = max(0, end - when)
    day = from_ts(when).strftime("%d %b %Y")
    old_by_id = {i["id"]: i for i in old_items}
    new_by_id = {i["id"]: i for i in new_items}
    specs: list[tuple[int, str, Obj, int]] = []
    for item_id, old in old_by_id.items():
        new = new_by_id.get(item_id)
        if new and (new["price"]["id"], new["quantity"]) == (old["price"]["id"], old["quantity"]):
            continue
        amount = round(old["price"]["unit_amount"] * old["quantity"] * remaining / total)
        specs.append(
            (
                -amount,
                f"Unused time on {old['quantity']} \N{MULTIPLICATION SIGN} "
                f"{_product_name(sb, old['price'])} after {day}",
                old["price"],
                old["quantity"],
            )
        )
    for item_id, new in new_by_id.items():
        old = old_by_id.get(item_id)
        if old and (new["price"]["id"], new["quantity"]) == (old["price"]["id"], old["quantity"]):
            continue
        amount = round(new["price"]["unit_amount"] * new["quantity"] * remaining / total)
        specs.append(
            (
                amount,
                f"Remaining time on {new['quantity']} \N{MULTIPLICATION SIGN} "
                f"{_product_name(sb, new['price'])} after {day}",
                new["price"],
                new["quantity"],
            )
        )
    return specs


def new_invoice_item(
    sb: Sandbox,
    customer: Obj,
    sub: Obj | None,
    *,
    amount: int,
    description: str,
    price: Obj | None,
    quantity: int,
    period: tuple[int, int],
    proration: bool,
    now: int,
    currency: str = "usd",
    metadata: dict[str, str] | None = None,
) -> Obj:
    ii = template("invoiceitem")
    ii.update(
        {
            "id": new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": price["currency"] if price else currency,
            "customer": customer["id"],
            "customer_account": None,
            "date": now,
            "description": description,
            "discountable": not proration,
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": metadata or {},
            "net_amount": amount,
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "subscription_item": None},
            }
            if sub
            else None,
            "period": {"start": period[0], "end": period[1]},
            "pricing": {
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]}
                if price
                else None,
                "unit_amount_decimal": price["unit_amount_decimal"] if price else None,
            },
            "proration": proration,
            "quantity": quantity,
            "quantity_decimal": str(quantity),
            "tax_rates": [],
            "test_clock": customer["test_clock"],
        }
    )
    sb.store.add("invoiceitem", ii)
    sb.events.emit("invoiceitem.created", ii)
    return ii


def change_items(
    sb: Sandbox,
    sub: Obj,
    changes: list[dict[str, Any]],
    *,
    proration_behavior: str,
    proration_date: int | None,
    now: int,
) -> Obj | None:
    """Apply item changes; returns the immediate invoice for ``always_invoice``."""
    customer = sb.store.get("customer", sub["customer"])
    old_items = snapshot(sub["items"]["data"])
    start, end = period_of(sub)
    items = sub["items"]["data"]
    for index, change in enumerate(changes):
        param = f"items[{index}]"
        item_id = change.get("id")
        if item_id:
            matches = [i for i in items if i["id"] == item_id]
            if not matches:
                raise invalid(f"Invalid subscription_item id: {item_id}", param=f"{param}[id]")
            item = matches[0]
            if change.get("deleted") in ("true", True):
                items.remove(item)
                continue
            if change.get("price"):
                price = sb.store.get("price", change["price"], f"{param}[price]")
                item["price"] = snapshot(price)
                item["plan"] = plan_from_price(price)
            if change.get("quantity") not in (None, ""):
                item["quantity"] = int(change["quantity"])
            if "metadata" in change:
                item["metadata"].update(change["metadata"] or {})
        else:
            price_id = change.get("price")
            if not price_id:
                raise invalid(
                    "Missing required param: items[0][price].",
                    param=f"{param}[price]",
                    code="parameter_missing",
                )
            price = sb.store.get("price", price_id, f"{param}[price]")
            items.append(
                _item(
                    sub["id"],
                    ItemSpec(price, int(change.get("quantity") or 1), change.get("metadata")),
                    start,
                    end,
                )
            )
    if not items:
        raise invalid("A subscription must have at least one active plan.", param="items")
    sub["items"]["total_count"] = len(items)
    when = proration_date or now
    if proration_behavior == "none" or sub["status"] not in ("active", "past_due"):
        return None
    for amount, description, price, quantity in _proration_specs(sb, sub, old_items, items, when):
        new_invoice_item(
            sb,
            customer,
            sub,
            amount=amount,
            description=description,
            price=price,
            quantity=quantity,
            period=(when, end),
            proration=True,
            now=now,
        )
    if proration_behavior != "always_invoice":
        return None
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_update",
        lines=_pending_item_lines(sb, sub),
        period_start=when,
        period_end=when,
        created=now,
        currency=sub["currency"],
    )
    sub["latest_invoice"] = invoice["id"]
    return invoice


def collect_update_invoice(sb: Sandbox, invoice: Obj, now: int) -> StripeError | None:
    invoicing.finalize(sb, invoice, now)
    return _collect(sb, invoice, now, automatic=True)


# -- cancel / pause / resume ------------------------------------------------


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
    return sub


def resume(sb: Sandbox, sub: Obj, now: int) -> Obj:
    if sub["status"] != "paused":
        raise invalid(
            "Only paused subscriptions can be resumed. To undo a scheduled "
            "cancellation, update the subscription with cancel_at_period_end=false."
        )
    customer = sb.store.get("customer", sub["customer"])
    before = snapshot(sub)
    for item in sub["items"]["data"]:
        interval, count = _interval(item["price"])
        item["current_period_start"] = now
        item["current_period_end"] = next_period_end(now, now, interval, count)
    sub["billing_cycle_anchor"] = now
    sub["status"] = "active"
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_cycle",
        lines=_cycle_lines(sb, sub),
        period_start=now,
        period_end=now,
        created=now,
        currency=sub["currency"],
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
    _collect(sb, invoice, now, automatic=True)
    return sub


# -- time passing ---------------------------------------------------------------


def renew(sb: Sandbox, sub: Obj, at: int) -> None:
    """Start the next period: new period on the items, cycle invoice, collect."""
    customer = sb.store.get("customer", sub["customer"])
    before = snapshot(sub)
    old_start, old_end = period_of(sub)
    trial_ending = sub["status"] == "trialing"
    pm = sub["default_payment_method"] or customer["invoice_settings"]["default_payment_method"]
    if trial_ending and pm is None:
        behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
        if behavior == "cancel":
            invoicing.end_subscription(sb, sub, at, reason="cancellation_requested")
            return
        if behavior == "pause":
            sub["status"] = "paused"
            sb.events.emit("customer.subscription.paused", sub)
            sb.events.emit("customer.subscription.updated", sub, {"status": "trialing"})
            return
    for item in sub["items"]["data"]:
        interval, count = _interval(item["price"])
        item["current_period_start"] = old_end
        item["current_period_end"] = next_period_end(
            sub["billing_cycle_anchor"], old_end, interval, count
        )
    if trial_ending:
        sub["status"] = "active"
    lines = _cycle_lines(sb, sub) + _pending_item_lines(sb, sub)
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_cycle",
        lines=lines,
        period_start=old_start,
        period_end=old_end,
        created=at,
        currency=sub["currency"],
    )
    sub["latest_invoice"] = invoice["id"]
    previous: dict[str, Any] = {
        "items": before["items"],
        "latest_invoice": before["latest_invoice"],
    }
    if trial_ending:
        previous["status"] = "trialing"
    sb.events.emit("customer.subscription.updated", sub, previous)
    invoicing.finalize(sb, invoice, at)
    _collect(sb, invoice, at, automatic=True)


def end_trial_now(sb: Sandbox, sub: Obj, now: int) -> None:
    """``trial_end=now``: the trial stops and a new billing cycle starts immediately."""
    sub["trial_end"] = now
    sub["billing_cycle_anchor"] = now
    for item in sub["items"]["data"]:
        item["current_period_end"] = now
    renew(sb, sub, now)


def _expire_incomplete(sb: Sandbox, sub: Obj, at: int) -> None:
    invoice = sb.store.maybe("invoice", sub["latest_invoice"])
    before = {"status": sub["status"]}
    sub["status"] = "incomplete_expired"
    sub["ended_at"] = at
    if invoice and invoice["status"] == "open":
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = at
        sb.events.emit("invoice.voided", invoice)
    sb.events.emit("customer.subscription.updated", sub, before)
    sb.events.emit("customer.subscription.deleted", sub)


def _due(sb: Sandbox, clock_id: str, until: int) -> tuple[int, int, str, Obj] | None:
    """The earliest scheduled thing on this clock at or before ``until``."""
    best: tuple[int, int, str, Obj] | None = None

    def consider(at: int | None, order: int, action: str, obj: Obj) -> None:
        nonlocal best
        if at is None or at > until:
            return
        key = (at, order, action, obj)
        if best is None or (at, order, sb.store.seq[obj["id"]]) < (
            best[0],
            best[1],
            sb.store.seq[best[3]["id"]],
        ):
            best = key

    for sub in sb.store.objects["subscription"].values():
        if sub["test_clock"] != clock_id:
            continue
        status = sub["status"]
        if status == "incomplete":
            consider(sub["created"] + INCOMPLETE_EXPIRY, 0, "expire", sub)
            continue
        if status not in LIVE_STATUSES:
            continue
        _, end = period_of(sub)
        if sub["cancel_at"] and sub["cancel_at"] <= end:
            consider(sub["cancel_at"], 1, "cancel", sub)
        elif status == "trialing":
            if sub["id"] not in sb.store.trial_warned:
                consider(
                    max(sub["trial_start"], sub["trial_end"] - TRIAL_WARNING),
                    0,
                    "trial_warning",
                    sub,
                )
            consider(sub["trial_end"], 2, "renew", sub)
        elif sub["cancel_at_period_end"]:
            consider(end, 1, "cancel", sub)
        else:
            consider(end, 2, "renew", sub)
    for invoice in sb.store.objects["invoice"].values():
        if invoice["test_clock"] == clock_id and invoice["status"] == "open":
            consider(invoice["next_payment_attempt"], 3, "retry", invoice)
    return best


def _run(sb: Sandbox, action: str, obj: Obj, at: int) -> None:
    if action == "renew":
        renew(sb, obj, at)
    elif action == "cancel":
        invoicing.end_subscription(sb, obj, at, reason="cancellation_requested")
    elif action == "expire":
        _expire_incomplete(sb, obj, at)
    elif action == "trial_warning":
        sb.store.trial_warned.add(obj["id"])
        sb.events.emit("customer.subscription.trial_will_end", obj)
    elif action == "retry":
        obj["next_payment_attempt"] = None
        invoicing.pay(sb, obj, at, automatic=True)


def advance(sb: Sandbox, clock: Obj, target: int) -> None:
    """Move ``clock`` to ``target``, running everything due on the way, in time order."""
    token = current_request.set((None, None))  # time-driven events have no request
    try:
        for _ in range(10_000):
            due = _due(sb, clock["id"], target)
            if due is None:
                break
            at, _, action, obj = due
            clock["frozen_time"] = max(clock["frozen_time"], at)
            _run(sb, action, obj, at)
        clock["frozen_time"] = target
    finally:
        current_request.reset(token)
