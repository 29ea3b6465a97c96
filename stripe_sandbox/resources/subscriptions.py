"""Subscriptions: create, retrieve, update (items with proration, discounts, cancellation
at period end), cancel, resume, list."""

from __future__ import annotations

from typing import Any

from .. import discounts, lifecycle, methods, prorations
from ..api import LIST_PARAMS, Call, Route, paginate
from ..clock import DAY
from ..errors import invalid, required
from ..items import ItemSpec, item_quantity
from ..lifecycle import NewSubscription
from ..params import Params, merge_metadata, parse_bool, parse_int
from ..sandbox import Sandbox
from ..store import Obj, snapshot

COMMON = {
    "metadata",
    "default_payment_method",
    "description",
    "payment_behavior",
    "proration_behavior",
    "cancel_at_period_end",
    "cancel_at",
    "trial_end",
    "off_session",
    "collection_method",
    "payment_settings",
    "trial_settings",
    "automatic_tax",
    "default_tax_rates",
    "discounts",
    "days_until_due",
    "billing_cycle_anchor",
    "add_invoice_items",
    "application_fee_percent",
    "default_source",
    "on_behalf_of",
    "transfer_data",
    "invoice_settings",
    "pending_invoice_item_interval",
    "billing_thresholds",
    "items",
    "billing_mode",
}
CREATE_FIELDS = COMMON | {
    "customer",
    "trial_period_days",
    "trial_from_plan",
    "currency",
    "backdate_start_date",
    "billing_cycle_anchor_config",
}
UPDATE_FIELDS = COMMON | {
    "proration_date",
    "pause_collection",
    "cancellation_details",
    "trial_from_plan",
}
PAYMENT_BEHAVIORS = (
    "allow_incomplete",
    "default_incomplete",
    "error_if_incomplete",
    "pending_if_incomplete",
)
END_BEHAVIORS = ("cancel", "create_invoice", "pause")


def _pm_for_customer(sb: Sandbox, customer: Obj, pm_id: str | None, now: int) -> str | None:
    """A subscription's default payment method must belong to its customer; a test
    token (``pm_card_visa``) is saved to the customer first, as Stripe does."""
    if not pm_id:
        return None
    if methods.is_test_token(pm_id):
        made = methods.payment_method_from_token(sb, pm_id, now)
        return str(methods.attach(sb, made, customer)["id"])
    pm = sb.store.maybe("payment_method", pm_id)
    if pm is None or pm["customer"] != customer["id"]:
        raise invalid(
            f"The customer does not have a payment method with the ID {pm_id}. The "
            "payment method must be attached to the customer.",
            param="default_payment_method",
            code="resource_missing",
        )
    return pm_id


def _recurring_price(sb: Sandbox, price_id: Any, param: str) -> Obj:
    if not price_id:
        raise required(param)
    price = sb.store.get("price", str(price_id), param)
    if price["type"] != "recurring":
        raise invalid(
            "The price specified is set to `type=one_time` but this field only "
            "accepts prices with `type=recurring`.",
            param=param,
        )
    if not price["active"]:
        raise invalid(
            "The price specified is inactive. This field only accepts active prices.", param=param
        )
    return price


def _trial_end(p: Params, now: int) -> int | None:
    raw = p.raw("trial_end")
    if raw == "now":
        return None
    if raw not in (None, ""):
        value = parse_int(raw, "trial_end")
        assert value is not None
        if value <= now:
            raise invalid(
                "Invalid timestamp: must be an integer Unix timestamp in the future.",
                param="trial_end",
            )
        return value
    days = p.int("trial_period_days", minimum=0)
    return now + days * DAY if days else None


def _end_behavior(p: Params) -> str:
    behavior = (p.dict("trial_settings").get("end_behavior") or {}).get(
        "missing_payment_method"
    ) or "create_invoice"
    if behavior not in END_BEHAVIORS:
        raise invalid(
            f"Invalid trial_settings[end_behavior][missing_payment_method]: {behavior}",
            param="trial_settings[end_behavior][missing_payment_method]",
        )
    return str(behavior)


def _save_default(p: Params) -> str:
    save = p.dict("payment_settings").get("save_default_payment_method") or "off"
    if save not in ("off", "on_subscription"):
        raise invalid(
            f"Invalid payment_settings[save_default_payment_method]: {save}",
            param="payment_settings[save_default_payment_method]",
        )
    return str(save)


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(CREATE_FIELDS)
    customer = sb.store.get("customer", p.req_str("customer"), "customer")
    items = p.list("items")
    if not items:
        raise required("items")
    specs = []
    for index, raw in enumerate(items):
        item = raw if isinstance(raw, dict) else {}
        price = _recurring_price(sb, item.get("price"), f"items[{index}][price]")
        quantity = item_quantity(
            price,
            parse_int(item.get("quantity"), f"items[{index}][quantity]", minimum=1),
            f"items[{index}]",
        )
        specs.append(ItemSpec(price, quantity, item.get("metadata")))
    behavior = p.str("payment_behavior") or "allow_incomplete"
    if behavior not in PAYMENT_BEHAVIORS:
        raise invalid(f"Invalid payment_behavior: {behavior}", param="payment_behavior")
    now = sb.now(customer["test_clock"])
    first_amount = sum(int(s.price["unit_amount"]) * (s.quantity or 0) for s in specs)
    request = NewSubscription(
        items=specs,
        payment_behavior=behavior,
        trial_end=_trial_end(p, now),
        metadata=merge_metadata({}, p.raw("metadata")),
        cancel_at_period_end=p.bool("cancel_at_period_end"),
        description=p.str("description"),
        missing_pm_behavior=_end_behavior(p),
        save_default_payment_method=_save_default(p),
        redemptions=discounts.resolve(
            sb,
            p.list("discounts"),
            param="discounts",
            now=now,
            customer_id=customer["id"],
            amount=first_amount,
        ),
    )
    request.default_payment_method = _pm_for_customer(
        sb, customer, p.str("default_payment_method"), now
    )
    return lifecycle.create(sb, customer, request)


def retrieve(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("subscription", call.match["id"])


def _schedule_cancel(sub: Obj, p: Params, now: int) -> None:
    wants = p.has("cancel_at_period_end") or p.has("cancel_at")
    if wants and sub["schedule"]:
        raise invalid(
            f"The subscription is managed by the subscription schedule `{sub['schedule']}`, "
            "and updating any cancelation behavior directly is not allowed. Please update "
            "the schedule instead.",
        )
    if p.has("cancel_at_period_end"):
        lifecycle.schedule_cancel(sub, at_period_end=p.bool("cancel_at_period_end"), now=now)
    if p.has("cancel_at"):
        lifecycle.schedule_cancel(sub, at_period_end=False, now=now, at=p.int("cancel_at"))
    details = p.dict("cancellation_details")
    for key in ("comment", "feedback"):
        if key in details:
            sub["cancellation_details"][key] = details[key] or None


def _simple_fields(sb: Sandbox, sub: Obj, customer: Obj, p: Params, now: int) -> None:
    if p.has("metadata"):
        sub["metadata"] = merge_metadata(sub["metadata"], p.raw("metadata"))
    if p.has("description"):
        sub["description"] = p.str("description")
    if p.has("default_payment_method"):
        sub["default_payment_method"] = _pm_for_customer(
            sb, customer, p.str("default_payment_method"), now
        )
    if p.has("payment_settings"):
        sub["payment_settings"]["save_default_payment_method"] = _save_default(p)
    if p.has("trial_settings"):
        sub["trial_settings"]["end_behavior"]["missing_payment_method"] = _end_behavior(p)
    if p.has("pause_collection"):
        pause = p.raw("pause_collection")
        sub["pause_collection"] = (
            {"behavior": pause.get("behavior"), "resumes_at": pause.get("resumes_at")}
            if isinstance(pause, dict)
            else None
        )


def _item_changes(sb: Sandbox, sub: Obj, p: Params, behavior: str, now: int) -> Obj | None:
    if not p.has("items"):
        return None
    changes = [c if isinstance(c, dict) else {} for c in p.list("items")]
    for index, change in enumerate(changes):
        if change.get("price"):
            _recurring_price(sb, change["price"], f"items[{index}][price]")
    return prorations.change_items(
        sb,
        sub,
        prorations.planned_items(sb, sub, changes),
        proration_behavior=behavior,
        proration_date=p.int("proration_date"),
        now=now,
    )


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p(UPDATE_FIELDS)
    sub = sb.store.get("subscription", call.match["id"])
    customer = sb.store.get("customer", sub["customer"])
    now = sb.now(customer["test_clock"])
    if sub["status"] in lifecycle.ENDED_STATUSES and (
        set(call.params) - {"metadata", "cancellation_details", "expand"}
    ):
        raise invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    before = snapshot(sub)
    behavior = p.str("proration_behavior") or "create_prorations"
    if behavior not in ("create_prorations", "always_invoice", "none"):
        raise invalid(f"Invalid proration_behavior: {behavior}", param="proration_behavior")
    if p.has("discounts"):
        redemptions = discounts.resolve(
            sb, p.list("discounts"), param="discounts", now=now, customer_id=customer["id"]
        )
        lifecycle.replace_discounts(sb, sub, redemptions, now)
    known_items = set(sb.store.objects["invoiceitem"])
    invoice = _item_changes(sb, sub, p, behavior, now)
    _simple_fields(sb, sub, customer, p, now)
    _schedule_cancel(sub, p, now)
    trial_end_now = p.raw("trial_end") == "now" and sub["status"] == "trialing"
    if not trial_end_now and p.raw("trial_end") not in (None, "", "now"):
        sub["trial_end"] = _trial_end(p, now)
        for item in sub["items"]["data"]:
            item["current_period_end"] = sub["trial_end"]
    prorations.settle_update(
        sb,
        sub,
        before,
        invoice,
        known_items=known_items,
        now=now,
        error_if_incomplete=p.str("payment_behavior") == "error_if_incomplete",
    )
    if trial_end_now:
        lifecycle.end_trial_now(sb, sub, now)
    return sub


def cancel(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"invoice_now", "prorate", "cancellation_details"})
    sub = sb.store.get("subscription", call.match["id"])
    if sub["status"] in lifecycle.ENDED_STATUSES:
        raise invalid(f"No such subscription: '{sub['id']}'", param="id", code="resource_missing")
    details = p.dict("cancellation_details")
    parse_bool(p.raw("invoice_now"), "invoice_now")
    return lifecycle.cancel_now(
        sb,
        sub,
        sb.now(sub["test_clock"]),
        details.get("comment") or None,
        details.get("feedback") or None,
    )


def resume(sb: Sandbox, call: Call) -> Obj:
    call.p({"billing_cycle_anchor", "proration_behavior", "proration_date"})
    sub = sb.store.get("subscription", call.match["id"])
    return lifecycle.resume(sb, sub, sb.now(sub["test_clock"]))


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        LIST_PARAMS
        | {
            "customer",
            "status",
            "price",
            "test_clock",
            "collection_method",
            "current_period_end",
            "current_period_start",
            "automatic_tax",
            "customer_account",
        }
    )
    objs = sb.store.all("subscription")
    status = p.str("status")
    if status is None:
        # Stripe hides canceled subscriptions unless asked for them.
        objs = [o for o in objs if o["status"] not in lifecycle.ENDED_STATUSES]
    elif status == "ended":
        objs = [o for o in objs if o["status"] in lifecycle.ENDED_STATUSES]
    elif status != "all":
        objs = [o for o in objs if o["status"] == status]
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.str("price"):
        objs = [
            o for o in objs if any(i["price"]["id"] == p.str("price") for i in o["items"]["data"])
        ]
    if p.str("test_clock"):
        objs = [o for o in objs if o["test_clock"] == p.str("test_clock")]
    return paginate(objs, call, "/v1/subscriptions")


ROUTES: list[Route] = [
    ("POST", "/v1/subscriptions", create),
    ("GET", "/v1/subscriptions", list_),
    ("GET", "/v1/subscriptions/{id}", retrieve),
    ("POST", "/v1/subscriptions/{id}", update),
    ("DELETE", "/v1/subscriptions/{id}", cancel),
    ("POST", "/v1/subscriptions/{id}/resume", resume),
]
