"""Changing a subscription's items: the new items, and what the change costs.

Stripe's proration: the unused time of what changed is credited and the
remaining time of what replaced it charged, each in proportion of the current
period still to run at ``proration_date`` (default: now).  With
``create_prorations`` these wait as invoice items for the next renewal; with
``always_invoice`` they are invoiced (and charged) at once; ``none`` makes none.

A change of billing interval (monthly to yearly or back) is different: the
billing cycle anchor moves to the change, a new period starts, and Stripe
invoices it at once, less the credit for the old period's unused time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import collection, discounts, invoicing, methods
from .clock import from_ts, next_period_end
from .errors import StripeError, invalid
from .events import changed
from .fixtures import template
from .ids import new_id
from .items import (
    ItemSpec,
    cycle_lines,
    interval_of,
    item_quantity,
    new_item,
    pending_item_lines,
    period_of,
    plan_from_price,
    product_name,
    usage_line,
)
from .metering import is_metered
from .params import parse_int
from .sandbox import Sandbox
from .store import Obj, snapshot


@dataclass
class Proration:
    amount: int
    description: str
    price: Obj
    quantity: int


def _same(old: Obj | None, new: Obj | None) -> bool:
    return (
        old is not None
        and new is not None
        and (old["price"]["id"], old.get("quantity")) == (new["price"]["id"], new.get("quantity"))
    )


def proration_specs(
    sb: Sandbox, sub: Obj, old_items: list[Obj], new_items: list[Obj], when: int
) -> list[Proration]:
    """Unused-time credits for what changed and remaining-time debits for what replaced it."""
    start, end = period_of(sub)
    total = max(1, end - start)
    remaining = max(0, end - when)
    day = from_ts(when).strftime("%d %b %Y")
    # Usage is never prorated: a metered item bills what was used (usage_cut).
    old_by_id = {i["id"]: i for i in old_items if not is_metered(i["price"])}
    new_by_id = {i["id"]: i for i in new_items if not is_metered(i["price"])}

    specs: list[Proration] = []
    for item_id, old in old_by_id.items():
        if _same(old, new_by_id.get(item_id)):
            continue
        amount = round(old["price"]["unit_amount"] * old["quantity"] * remaining / total)
        if amount:
            specs.append(
                Proration(
                    -amount,
                    f"Unused time on {old['quantity']} \N{MULTIPLICATION SIGN} "
                    f"{product_name(sb, old['price'])} after {day}",
                    old["price"],
                    old["quantity"],
                )
            )
    for item_id, new in new_by_id.items():
        if _same(old_by_id.get(item_id), new):
            continue
        amount = round(new["price"]["unit_amount"] * new["quantity"] * remaining / total)
        if amount:
            specs.append(
                Proration(
                    amount,
                    f"Remaining time on {new['quantity']} \N{MULTIPLICATION SIGN} "
                    f"{product_name(sb, new['price'])} after {day}",
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
            # Prorations are discounted too (billing mode flexible, proration_discounts
            # "included"): the credit for unused time is what the customer really paid.
            "discountable": True,
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


def _changed_item(sb: Sandbox, item: Obj, change: dict[str, Any], param: str) -> None:
    if change.get("price"):
        price = sb.store.get("price", change["price"], f"{param}[price]")
        item["price"] = snapshot(price)
        item["plan"] = plan_from_price(price)
        if is_metered(price):
            item.pop("quantity", None)
        else:
            item.setdefault("quantity", 1)
    if change.get("quantity") not in (None, ""):
        given = parse_int(change["quantity"], f"{param}[quantity]", minimum=1)
        quantity = item_quantity(sb.store.get("price", item["price"]["id"]), given, param)
        if quantity is not None:
            item["quantity"] = quantity
    if "metadata" in change:
        item["metadata"].update(change["metadata"] or {})


def planned_items(sb: Sandbox, sub: Obj, changes: list[dict[str, Any]]) -> list[Obj]:
    """The subscription's items after ``changes`` (``items[]`` of an update), unsaved."""
    start, end = period_of(sub)
    items: list[Obj] = snapshot(sub["items"]["data"])
    for index, change in enumerate(changes):
        param = f"items[{index}]"
        item_id = change.get("id")
        if item_id:
            matches = [i for i in items if i["id"] == item_id]
            if not matches:
                raise invalid(f"Invalid subscription_item id: {item_id}", param=f"{param}[id]")
            if change.get("deleted") in ("true", True):
                items.remove(matches[0])
            else:
                _changed_item(sb, matches[0], change, param)
            continue
        price_id = change.get("price")
        if not price_id:
            raise invalid(
                f"Missing required param: {param}[price].",
                param=f"{param}[price]",
                code="parameter_missing",
            )
        price = sb.store.get("price", price_id, f"{param}[price]")
        given = parse_int(change.get("quantity"), f"{param}[quantity]", minimum=1)
        spec = ItemSpec(price, item_quantity(price, given, param), change.get("metadata"))
        items.append(new_item(sub["id"], spec, start, end))
    if not items:
        raise invalid("A subscription must have at least one active plan.", param="items")
    return items


def prorates(sub: Obj, proration_behavior: str) -> bool:
    return proration_behavior != "none" and sub["status"] in ("active", "past_due")


def changes_interval(old_items: list[Obj], new_items: list[Obj]) -> bool:
    return {interval_of(i["price"]) for i in old_items} != {
        interval_of(i["price"]) for i in new_items
    }


def restart_period(new_items: list[Obj], when: int) -> None:
    """The items' new period after an interval change: it starts at the change."""
    for item in new_items:
        interval, count = interval_of(item["price"])
        item["current_period_start"] = when
        item["current_period_end"] = next_period_end(when, when, interval, count)


def credits_and_charges(
    sb: Sandbox, sub: Obj, old_items: list[Obj], new_items: list[Obj], when: int
) -> list[Proration]:
    """What a change prorates: on an interval change only the old period's unused time
    (the new period is billed whole), else credits and charges for the rest of it."""
    specs = proration_specs(sb, sub, old_items, new_items, when)
    if changes_interval(old_items, new_items):
        return [spec for spec in specs if spec.amount < 0]
    return specs


def usage_cut(
    sb: Sandbox, sub: Obj, old_items: list[Obj], new_items: list[Obj], when: int, *, restart: bool
) -> None:
    """Usage a change ends: a metered item that leaves (or changes price), or every
    one when the period restarts, bills what its meter counted from its period's
    start until the change, as a pending invoice item the next invoice takes."""
    kept = {(i["id"], i["price"]["id"]) for i in new_items}
    customer = sb.store.get("customer", sub["customer"])
    for item in old_items:
        if not is_metered(item["price"]):
            continue
        if not restart and (item["id"], item["price"]["id"]) in kept:
            continue
        line = usage_line(sb, item, customer["id"], (item["current_period_start"], when))
        if line.amount == 0:
            continue
        new_invoice_item(
            sb,
            customer,
            sub,
            amount=line.amount,
            description=line.description,
            price=item["price"],
            quantity=line.quantity,
            period=(line.period_start, line.period_end),
            proration=False,
            now=when,
        )


def change_items(
    sb: Sandbox,
    sub: Obj,
    new_items: list[Obj],
    *,
    proration_behavior: str,
    proration_date: int | None,
    now: int,
) -> Obj | None:
    """Put ``new_items`` on the subscription; returns the invoice made at once, if any
    (``always_invoice``, or a change of billing interval)."""
    customer = sb.store.get("customer", sub["customer"])
    old_items = sub["items"]["data"]
    _, end = period_of(sub)
    when = proration_date or now
    new_interval = changes_interval(old_items, new_items) and sub["status"] in (
        "active",
        "past_due",
    )
    specs = (
        credits_and_charges(sb, sub, old_items, new_items, when)
        if prorates(sub, proration_behavior)
        else []
    )
    usage_cut(sb, sub, old_items, new_items, when, restart=new_interval)
    if new_interval:
        restart_period(new_items, when)
        sub["billing_cycle_anchor"] = when
    sub["items"]["data"] = new_items
    sub["items"]["total_count"] = len(new_items)
    for spec in specs:
        new_invoice_item(
            sb,
            customer,
            sub,
            amount=spec.amount,
            description=spec.description,
            price=spec.price,
            quantity=spec.quantity,
            period=(when, end),
            proration=True,
            now=now,
        )
    if proration_behavior != "always_invoice" and not new_interval:
        return None
    lines = pending_item_lines(sb, sub)
    if new_interval:
        lines = cycle_lines(sb, new_items) + lines
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=sub,
        billing_reason="subscription_update",
        lines=lines,
        period_start=when,
        period_end=when,
        created=now,
        currency=sub["currency"],
        applied_discounts=discounts.active_on(sb, sub, now),
    )
    sub["latest_invoice"] = invoice["id"]
    return invoice


def collect_update_invoice(sb: Sandbox, invoice: Obj, now: int) -> StripeError | None:
    invoicing.finalize(sb, invoice, now)
    if invoice["amount_due"] == 0:
        collection.mark_paid(sb, invoice, now)
        return None
    return collection.attempt(sb, invoice, now, automatic=True, off_session=True)


def _owner(ii: Obj) -> str | None:
    parent = ii.get("parent") or {}
    owner = (parent.get("subscription_details") or {}).get("subscription")
    return str(owner) if owner else None


def settle_update(
    sb: Sandbox,
    sub: Obj,
    before: Obj,
    invoice: Obj | None,
    *,
    known_items: set[str],
    now: int,
    error_if_incomplete: bool,
) -> None:
    """Announce an update made to ``sub`` (``before`` is how it was) and collect the
    invoice it made, if any.

    With ``payment_behavior=error_if_incomplete`` Stripe does not update the
    subscription when that invoice cannot be paid: it answers 402 and the
    subscription stays as it was (no new items or price, no past_due), so the
    update is only announced once paid, and a refused one is undone."""
    diff = changed(before, sub)
    refusable = error_if_incomplete and invoice is not None
    if diff and not refusable:
        sb.events.emit("customer.subscription.updated", sub, diff)
    if invoice is None:
        return
    if not refusable:
        collect_update_invoice(sb, invoice, now)
        return
    invoicing.finalize(sb, invoice, now)
    error = _refusal(sb, invoice)
    if error is None and invoice["amount_due"] > 0:
        error = collection.attempt(sb, invoice, now, automatic=True, off_session=True)
    elif error is None:
        collection.mark_paid(sb, invoice, now)
    if error is not None:
        _refuse(sb, sub, before, invoice, known_items=known_items, now=now)
        raise error
    diff = changed(before, sub)
    if diff:
        sb.events.emit("customer.subscription.updated", sub, diff)


def _refusal(sb: Sandbox, invoice: Obj) -> StripeError | None:
    """The card error an update's invoice would meet, checked before charging (as a
    subscription created with ``error_if_incomplete`` is), so that a refused update
    never moves the subscription to past_due on the way."""
    if invoice["amount_due"] == 0:
        return None
    pm_id = collection.default_payment_method(sb, invoice)
    if pm_id is None:
        return None  # the attempt itself answers that there is nothing to charge
    card = methods.card_of(sb, pm_id)
    if card is not None and card.three_d_secure:
        return methods.card_error("authentication_required")
    if methods.next_decline(sb, pm_id, consume=False) is None:
        return None
    decline = methods.next_decline(sb, pm_id)
    assert decline is not None
    return methods.card_error(decline)


def _refuse(
    sb: Sandbox, sub: Obj, before: Obj, invoice: Obj, *, known_items: set[str], now: int
) -> None:
    """Undo an update whose invoice could not be paid: the subscription as it was,
    the prorations (and usage) the update made deleted, the pending items it swept
    onto its invoice left pending again for the next renewal, the invoice voided."""
    sub.clear()
    sub.update(before)
    for ii in list(sb.store.objects["invoiceitem"].values()):
        if _owner(ii) != sub["id"]:
            continue
        if ii["id"] not in known_items:
            sb.store.remove("invoiceitem", ii["id"])
            sb.events.emit("invoiceitem.deleted", {**ii, "deleted": True})
        elif ii["invoice"] == invoice["id"]:
            ii["invoice"] = None
    if invoice["status"] == "open":
        # After the subscription is restored: the voided invoice is no longer its
        # latest, so voiding it does not touch the subscription's status.
        collection.void(sb, invoice, now)
