"""Subscription schedules: changes planned in phases, applied when a phase begins.

The "downgrade at the end of the period" recipe from Stripe's docs: create a
schedule ``from_subscription`` (one phase: the current items until the period
ends), update its phases to add a next phase with the new price, and let time
pass.  When a phase ends the next one's items replace the subscription's
(``customer.subscription.updated``); at a period boundary there is nothing to
prorate and the renewal bills the new price.  When the last phase ends the
schedule completes and, with ``end_behavior=release``, lets the subscription go
on alone (``cancel`` cancels it).  Releasing a schedule early keeps the
subscription as it is; canceling one cancels its subscription too.  While
attached, the subscription's ``schedule`` names it and its cancellation can
only be changed through the schedule.
"""

from __future__ import annotations

from typing import Any

from . import collection, discounts, items, lifecycle, prorations
from .clock import add_interval
from .errors import invalid
from .fixtures import template
from .ids import new_id
from .items import ItemSpec
from .params import parse_int
from .sandbox import Sandbox
from .store import Obj, snapshot

LIVE = ("not_started", "active")
END_BEHAVIORS = ("release", "cancel")
PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")


def _phase(
    phase_items: list[dict[str, Any]],
    start: int,
    end: int,
    *,
    currency: str,
    proration_behavior: str,
    metadata: dict[str, str] | None = None,
    phase_discounts: list[Obj] | None = None,
) -> Obj:
    return {
        "add_invoice_items": [],
        "application_fee_percent": None,
        "billing_cycle_anchor": None,
        "billing_thresholds": None,
        "collection_method": None,
        "currency": currency,
        "default_payment_method": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": phase_discounts or [],
        "end_date": end,
        "invoice_settings": None,
        "items": phase_items,
        "metadata": metadata or {},
        "on_behalf_of": None,
        "proration_behavior": proration_behavior,
        "start_date": start,
        "transfer_data": None,
        "trial_end": None,
    }


def _phase_item(price: Obj, quantity: int | None, metadata: dict[str, str] | None = None) -> Obj:
    item = {
        "billing_thresholds": None,
        "discounts": [],
        "metadata": dict(metadata or {}),
        "plan": price["id"],
        "price": price["id"],
        "quantity": quantity,
        "tax_rates": [],
    }
    if quantity is None:
        del item["quantity"]  # a metered price's item has none
    return item


def _new_schedule(sb: Sandbox, customer: Obj, now: int) -> Obj:
    schedule = template("subscription_schedule")
    schedule.update(
        {
            "id": new_id("sub_sched"),
            "object": "subscription_schedule",
            "application": None,
            "billing_mode": {
                "type": "flexible",
                "flexible": {"proration_discounts": "included"},
                "updated_at": now,
            },
            "canceled_at": None,
            "completed_at": None,
            "created": now,
            "current_phase": None,
            "customer": customer["id"],
            "customer_account": None,
            "default_settings": {
                "application_fee_percent": None,
                "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
                "billing_cycle_anchor": "automatic",
                "billing_thresholds": None,
                "collection_method": "charge_automatically",
                "default_payment_method": None,
                "description": None,
                "invoice_settings": {
                    "account_tax_ids": None,
                    "custom_fields": None,
                    "days_until_due": None,
                    "description": None,
                    "footer": None,
                    "issuer": {"type": "self"},
                },
                "on_behalf_of": None,
                "transfer_data": None,
            },
            "end_behavior": "release",
            "livemode": False,
            "metadata": {},
            "phases": [],
            "released_at": None,
            "released_subscription": None,
            "status": "not_started",
            "subscription": None,
            "test_clock": customer["test_clock"],
        }
    )
    return schedule


def _set_current(schedule: Obj, index: int) -> None:
    phase = schedule["phases"][index]
    schedule["current_phase"] = {"start_date": phase["start_date"], "end_date": phase["end_date"]}


def current_index(schedule: Obj) -> int | None:
    current = schedule["current_phase"]
    if current is None:
        return None
    for index, phase in enumerate(schedule["phases"]):
        if phase["start_date"] == current["start_date"]:
            return index
    return None


def from_subscription(sb: Sandbox, sub: Obj, now: int) -> Obj:
    if sub["schedule"] is not None:
        raise invalid(
            f"You cannot migrate a subscription that is already attached to a schedule: "
            f"`{sub['schedule']}`.",
            param="from_subscription",
        )
    if sub["status"] in lifecycle.ENDED_STATUSES:
        raise invalid(
            "You cannot create a subscription schedule from a canceled subscription.",
            param="from_subscription",
        )
    customer = sb.store.get("customer", sub["customer"])
    schedule = _new_schedule(sb, customer, now)
    start, end = items.period_of(sub)
    current = [
        _phase_item(i["price"], i.get("quantity"), i["metadata"]) for i in sub["items"]["data"]
    ]
    schedule["phases"] = [
        _phase(
            current,
            start,
            end,
            currency=sub["currency"],
            proration_behavior="create_prorations",
            # The phase the subscription is in keeps its discounts.
            phase_discounts=[_phase_discount(discount=d) for d in sub["discounts"]],
        )
    ]
    schedule.update({"status": "active", "subscription": sub["id"]})
    _set_current(schedule, 0)
    sb.store.add("subscription_schedule", schedule)
    sb.events.emit("subscription_schedule.created", schedule)
    sub["schedule"] = schedule["id"]
    sb.events.emit("customer.subscription.updated", sub, {"schedule": None})
    return schedule


def _phase_discount(
    *, coupon: str | None = None, discount: str | None = None, promotion_code: str | None = None
) -> Obj:
    return {
        "coupon": coupon,
        "discount": discount,
        "discount_end": None,
        "promotion_code": promotion_code,
    }


def _phase_discounts(sb: Sandbox, entry: dict[str, Any], param: str, *, now: int) -> list[Obj]:
    """A phase's ``discounts``: coupons, promotion codes or existing discounts to
    reuse. Not given (or ``""``), a phase has none of its own: it inherits only the
    customer's discount, never the subscription's (Stripe's API reference)."""
    raw = entry.get("discounts")
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not raw:
        return []
    entries = [e if isinstance(e, dict) else {} for e in raw]
    # Validated as a subscription's discounts are; kept as given.
    discounts.resolve(sb, entries, param=f"{param}[discounts]", now=now, customer_id=None)
    return [
        _phase_discount(
            coupon=e.get("coupon") or None,
            discount=e.get("discount") or None,
            promotion_code=e.get("promotion_code") or None,
        )
        for e in entries
    ]


def _phase_items(sb: Sandbox, entry: dict[str, Any], param: str) -> tuple[list[Obj], list[Obj]]:
    raw = entry.get("items") or []
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not raw:
        raise invalid(f"Missing required param: {param}[items].", param=f"{param}[items]")
    phase_items: list[Obj] = []
    prices: list[Obj] = []
    for position, raw_item in enumerate(raw):
        key = f"{param}[items][{position}][price]"
        price = sb.store.get("price", (raw_item or {}).get("price") or "", key)
        given = parse_int(raw_item.get("quantity"), f"{key}[quantity]", minimum=1)
        quantity = items.item_quantity(price, given, f"{param}[items][{position}]")
        phase_items.append(_phase_item(price, quantity, raw_item.get("metadata")))
        prices.append(price)
    return phase_items, prices


def _parse_phases(
    sb: Sandbox, raw: list[Any], first_start: int, default_proration: str, *, now: int
) -> list[Obj]:
    """Phases as Stripe reads them: each starts where the previous ended; an end comes
    from ``end_date`` or ``duration``, and the last phase defaults to one interval."""
    if not raw:
        raise invalid("Missing required param: phases.", param="phases")
    phases: list[Obj] = []
    start = first_start
    for index, entry in enumerate(raw):
        item = entry if isinstance(entry, dict) else {}
        param = f"phases[{index}]"
        phase_items, prices = _phase_items(sb, item, param)
        if index == 0 and item.get("start_date") not in (None, "", "now"):
            given = parse_int(item["start_date"], f"{param}[start_date]")
            if given != first_start:
                raise invalid(
                    "You can not modify the start date of the current phase.",
                    param=f"{param}[start_date]",
                )
        end = _phase_end(item, start, prices[0], param, last=index == len(raw) - 1)
        proration = item.get("proration_behavior") or default_proration
        if proration not in PRORATION_BEHAVIORS:
            raise invalid(
                f"Invalid proration_behavior: {proration}", param=f"{param}[proration_behavior]"
            )
        phases.append(
            _phase(
                phase_items,
                start,
                end,
                currency=prices[0]["currency"],
                proration_behavior=proration,
                metadata=item.get("metadata"),
                phase_discounts=_phase_discounts(sb, item, param, now=now),
            )
        )
        start = end
    return phases


def _phase_end(item: dict[str, Any], start: int, price: Obj, param: str, *, last: bool) -> int:
    if item.get("end_date") not in (None, ""):
        end = parse_int(item["end_date"], f"{param}[end_date]")
        assert end is not None
    elif item.get("duration"):
        duration = item["duration"]
        interval = duration.get("interval")
        if interval not in ("day", "week", "month", "year"):
            raise invalid("Invalid duration interval.", param=f"{param}[duration][interval]")
        count = parse_int(duration.get("interval_count"), f"{param}[duration][interval_count]")
        end = add_interval(start, interval, count or 1)
    elif last:
        interval, count = items.interval_of(price)
        end = add_interval(start, interval, count)
    else:
        raise invalid(
            "Every phase but the last needs an end_date or a duration.",
            param=f"{param}[end_date]",
        )
    if end <= start:
        raise invalid("The phase must end after it starts.", param=f"{param}[end_date]")
    return end


def update(
    sb: Sandbox,
    schedule: Obj,
    *,
    phases: list[Any] | None,
    end_behavior: str | None,
    metadata: dict[str, str] | None,
    proration_behavior: str | None,
) -> Obj:
    if schedule["status"] not in LIVE:
        raise invalid(
            f"You cannot update a subscription schedule that is {schedule['status']}.",
        )
    before = snapshot(schedule)
    if end_behavior is not None:
        if end_behavior not in END_BEHAVIORS:
            raise invalid(f"Invalid end_behavior: {end_behavior}", param="end_behavior")
        schedule["end_behavior"] = end_behavior
    if metadata is not None:
        schedule["metadata"] = metadata
    if phases is not None:
        index = current_index(schedule)
        first_start = (
            schedule["phases"][index]["start_date"]
            if index is not None
            else schedule["phases"][0]["start_date"]
        )
        schedule["phases"] = _parse_phases(
            sb,
            phases,
            first_start,
            proration_behavior or "create_prorations",
            now=sb.time_of(schedule),
        )
        if schedule["status"] == "active":
            _set_current(schedule, 0)
            _apply_phase(sb, schedule, 0, sb.time_of(schedule))
    changed = {k: v for k, v in before.items() if schedule.get(k) != v}
    sb.events.emit("subscription_schedule.updated", schedule, changed)
    return schedule


def _apply_phase(sb: Sandbox, schedule: Obj, index: int, at: int) -> None:
    """Make the subscription's items those of the phase (a no-op when they already are)."""
    sub = sb.store.get("subscription", schedule["subscription"])
    phase = schedule["phases"][index]
    start, end = items.period_of(sub)
    by_price = {i["price"]["id"]: i for i in sub["items"]["data"]}
    new_items = []
    for wanted in phase["items"]:
        existing = by_price.get(wanted["price"])
        if existing is not None:
            kept = snapshot(existing)
            if wanted.get("quantity") is not None:
                kept["quantity"] = wanted["quantity"]
            new_items.append(kept)
        else:
            price = sb.store.get("price", wanted["price"])
            spec = ItemSpec(price, wanted.get("quantity"), wanted["metadata"])
            new_items.append(items.new_item(sub["id"], spec, start, end))
    _apply_phase_discounts(sb, sub, phase, at)
    current = [(i["price"]["id"], i.get("quantity")) for i in sub["items"]["data"]]
    if current == [(i["price"]["id"], i.get("quantity")) for i in new_items]:
        return
    before = snapshot(sub["items"])
    invoice = prorations.change_items(
        sb,
        sub,
        new_items,
        proration_behavior=phase["proration_behavior"],
        proration_date=None,
        now=at,
    )
    sb.events.emit("customer.subscription.updated", sub, {"items": before})
    if invoice is not None:
        prorations.collect_update_invoice(sb, invoice, at)


def _apply_phase_discounts(sb: Sandbox, sub: Obj, phase: Obj, at: int) -> None:
    """The subscription's discounts become the phase's: those it names are kept (or
    redeemed), the others end."""
    # A discount reused by id stays only while the subscription still has it: one
    # that has ended (a used ``once`` coupon) is not redeemed again.
    entries = [
        {key: d[key] for key in ("coupon", "discount", "promotion_code") if d[key]}
        for d in phase["discounts"]
        if d["discount"] is None or d["discount"] in sub["discounts"]
    ]
    redemptions = discounts.resolve(
        sb, entries, param="discounts", now=at, customer_id=sub["customer"]
    )
    before = list(sub["discounts"])
    lifecycle.replace_discounts(sb, sub, redemptions, at)
    if sub["discounts"] != before:
        sb.events.emit("customer.subscription.updated", sub, {"discounts": before})


def phase_ends(sb: Sandbox, schedule: Obj, at: int) -> None:
    """The current phase is over: begin the next one, or complete the schedule."""
    index = current_index(schedule)
    if index is None:
        return
    if index + 1 < len(schedule["phases"]):
        _set_current(schedule, index + 1)
        _apply_phase(sb, schedule, index + 1, at)
        sb.events.emit(
            "subscription_schedule.updated",
            schedule,
            {"current_phase": snapshot(schedule["phases"][index])},
        )
        return
    sub = sb.store.get("subscription", schedule["subscription"])
    schedule.update({"status": "completed", "completed_at": at, "current_phase": None})
    sb.events.emit("subscription_schedule.completed", schedule)
    if schedule["end_behavior"] == "cancel":
        sub["schedule"] = None
        collection.end_subscription(sb, sub, at, reason="cancellation_requested")
        return
    sub["schedule"] = None
    sb.events.emit("customer.subscription.updated", sub, {"schedule": schedule["id"]})


def release(sb: Sandbox, schedule: Obj, now: int, preserve_cancel_date: bool) -> Obj:
    if schedule["status"] not in LIVE:
        raise invalid(
            f"You cannot release a subscription schedule that is currently {schedule['status']}."
        )
    sub_id = schedule["subscription"]
    schedule.update(
        {
            "status": "released",
            "released_at": now,
            "released_subscription": sub_id,
            "subscription": None,
            "current_phase": None,
        }
    )
    sb.events.emit("subscription_schedule.released", schedule)
    sub = sb.store.maybe("subscription", sub_id)
    if sub is not None:
        previous: dict[str, Any] = {"schedule": schedule["id"]}
        sub["schedule"] = None
        if not preserve_cancel_date and sub["cancel_at"] is not None:
            previous.update(
                cancel_at=sub["cancel_at"], cancel_at_period_end=sub["cancel_at_period_end"]
            )
            lifecycle.schedule_cancel(sub, at_period_end=False, now=now)
        sb.events.emit("customer.subscription.updated", sub, previous)
    return schedule


def cancel(sb: Sandbox, schedule: Obj, now: int) -> Obj:
    if schedule["status"] not in LIVE:
        raise invalid(
            f"You cannot cancel a subscription schedule that is currently {schedule['status']}."
        )
    sub = sb.store.maybe("subscription", schedule["subscription"])
    schedule.update({"status": "canceled", "canceled_at": now, "current_phase": None})
    sb.events.emit("subscription_schedule.canceled", schedule)
    if sub is not None and sub["status"] not in lifecycle.ENDED_STATUSES:
        sub["schedule"] = None
        lifecycle.cancel_now(sb, sub, now)
    return schedule
