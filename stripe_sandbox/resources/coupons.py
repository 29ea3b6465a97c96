"""Coupons and promotion codes (``promotion[coupon]`` in the current API), incl. lookup
by ``code`` on the list endpoint."""

from __future__ import annotations

import re

from .. import discounts
from ..api import LIST_PARAMS, Call, Route, paginate
from ..clock import to_ts, wall_now
from ..errors import invalid, required
from ..events import changed
from ..fixtures import template
from ..ids import token
from ..params import Params, merge_metadata
from ..sandbox import Sandbox
from ..store import Obj, snapshot

COUPON_FIELDS = {
    "id",
    "name",
    "percent_off",
    "amount_off",
    "currency",
    "duration",
    "duration_in_months",
    "max_redemptions",
    "redeem_by",
    "metadata",
    "applies_to",
    "currency_options",
}
PROMOTION_FIELDS = {
    "code",
    "promotion",
    "active",
    "customer",
    "customer_account",
    "expires_at",
    "max_redemptions",
    "metadata",
    "restrictions",
}
CODE = re.compile(r"^[A-Za-z0-9-]{1,500}$")


def _now() -> int:
    return to_ts(wall_now())


def _off(p: Params) -> tuple[float | None, int | None, str | None]:
    percent = p.float("percent_off")
    amount = p.int("amount_off", minimum=1)
    currency = p.str("currency")
    if (percent is None) == (amount is None):
        raise invalid(
            "You must pass exactly one of percent_off or amount_off.", param="percent_off"
        )
    if percent is not None and not 0 < percent <= 100:
        raise invalid("percent_off must be greater than 0 and at most 100.", param="percent_off")
    if amount is not None and not currency:
        raise invalid("You must pass currency when passing amount_off.", param="currency")
    return percent, amount, currency.lower() if currency else None


def _duration(p: Params) -> tuple[str, int | None]:
    duration = p.str("duration") or "once"
    if duration not in discounts.DURATIONS:
        raise invalid(
            f"Invalid duration: must be one of {', '.join(discounts.DURATIONS)}", param="duration"
        )
    months = p.int("duration_in_months", minimum=1)
    if duration == "repeating" and months is None:
        raise required("duration_in_months")
    if duration != "repeating" and months is not None:
        raise invalid(
            "duration_in_months can only be set when duration is repeating.",
            param="duration_in_months",
        )
    return duration, months


def create_coupon(sb: Sandbox, call: Call) -> Obj:
    p = call.p(COUPON_FIELDS)
    coupon_id = p.str("id") or token(8)
    if sb.store.maybe("coupon", coupon_id) is not None:
        raise invalid("Coupon already exists.", param="id", code="resource_already_exists")
    percent, amount, currency = _off(p)
    duration, months = _duration(p)
    products = [str(x) for x in Params(p.dict("applies_to")).list("products")]
    coupon = template("coupon")
    coupon.update(
        {
            "id": coupon_id,
            "object": "coupon",
            "amount_off": amount,
            "created": _now(),
            "currency": currency,
            "duration": duration,
            "duration_in_months": months,
            "livemode": False,
            "max_redemptions": p.int("max_redemptions", minimum=1),
            "metadata": merge_metadata({}, p.raw("metadata")),
            "name": p.str("name"),
            "percent_off": percent,
            "redeem_by": p.int("redeem_by"),
            "times_redeemed": 0,
            "valid": True,
        }
    )
    # ``applies_to`` is includable: shown only when expanded (see expand.py).
    sb.store.coupon_products[coupon_id] = products
    sb.store.add("coupon", discounts.refresh_validity(coupon, _now()))
    sb.events.emit("coupon.created", coupon)
    return coupon


def retrieve_coupon(sb: Sandbox, call: Call) -> Obj:
    return discounts.refresh_validity(sb.store.get("coupon", call.match["id"]), _now())


def update_coupon(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"name", "metadata", "currency_options"})
    coupon = sb.store.get("coupon", call.match["id"])
    before = snapshot(coupon)
    if p.has("name"):
        coupon["name"] = p.str("name")
    if p.has("metadata"):
        coupon["metadata"] = merge_metadata(coupon["metadata"], p.raw("metadata"))
    sb.events.emit("coupon.updated", coupon, changed(before, coupon))
    return coupon


def delete_coupon(sb: Sandbox, call: Call) -> Obj:
    coupon = sb.store.get("coupon", call.match["id"])
    coupon["valid"] = False
    sb.store.remove("coupon", coupon["id"])
    # Discounts already applied keep working; only new redemptions are refused.
    sb.store.retired_coupons[coupon["id"]] = coupon
    sb.events.emit("coupon.deleted", coupon)
    return {"id": coupon["id"], "object": "coupon", "deleted": True}


def list_coupons(sb: Sandbox, call: Call) -> Obj:
    call.p(LIST_PARAMS)
    objs = [discounts.refresh_validity(c, _now()) for c in sb.store.all("coupon")]
    return paginate(objs, call, "/v1/coupons")


def _restrictions(p: Params) -> Obj:
    raw = Params(p.dict("restrictions"))
    minimum = raw.int("minimum_amount", minimum=1)
    currency = raw.str("minimum_amount_currency")
    if (minimum is None) != (currency is None):
        raise invalid(
            "restrictions[minimum_amount] and restrictions[minimum_amount_currency] go together.",
            param="restrictions[minimum_amount_currency]",
        )
    return {
        "first_time_transaction": raw.bool("first_time_transaction"),
        "minimum_amount": minimum,
        "minimum_amount_currency": currency.lower() if currency else None,
    }


def create_promotion_code(sb: Sandbox, call: Call) -> Obj:
    p = call.p(PROMOTION_FIELDS)
    promotion = Params(p.dict("promotion"))
    if promotion.str("type") not in (None, "coupon"):
        raise invalid("promotion[type] must be coupon.", param="promotion[type]")
    coupon_id = promotion.str("coupon")
    if not coupon_id:
        raise required("promotion[coupon]")
    coupon = sb.store.get("coupon", coupon_id, "promotion[coupon]")
    code = p.str("code") or token(8).upper()
    if not CODE.match(code):
        raise invalid("Promotion codes may contain only letters, digits and dashes.", param="code")
    taken = [
        c
        for c in sb.store.all("promotion_code")
        if c["active"] and c["code"].lower() == code.lower()
    ]
    if taken:
        raise invalid(
            f"An active promotion code with `code: {code}` already exists.",
            param="code",
            code="resource_already_exists",
        )
    customer = p.str("customer")
    if customer:
        sb.store.get("customer", customer, "customer")
    promo = template("promotion_code")
    promo.update(
        {
            "id": f"promo_{token(24)}",
            "object": "promotion_code",
            "active": p.bool("active", default=True),
            "code": code,
            "created": _now(),
            "customer": customer,
            "customer_account": None,
            "expires_at": p.int("expires_at"),
            "livemode": False,
            "max_redemptions": p.int("max_redemptions", minimum=1),
            "metadata": merge_metadata({}, p.raw("metadata")),
            "promotion": {"coupon": coupon["id"], "type": "coupon"},
            "restrictions": _restrictions(p),
            "times_redeemed": 0,
        }
    )
    sb.store.add("promotion_code", promo)
    sb.events.emit("promotion_code.created", promo)
    return promo


def retrieve_promotion_code(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("promotion_code", call.match["id"])


def update_promotion_code(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"active", "metadata", "restrictions"})
    promo = sb.store.get("promotion_code", call.match["id"])
    before = snapshot(promo)
    if p.has("active"):
        promo["active"] = p.bool("active")
    if p.has("metadata"):
        promo["metadata"] = merge_metadata(promo["metadata"], p.raw("metadata"))
    sb.events.emit("promotion_code.updated", promo, changed(before, promo))
    return promo


def list_promotion_codes(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"active", "code", "coupon", "customer", "customer_account"})
    objs = sb.store.all("promotion_code")
    if p.has("active"):
        objs = [o for o in objs if o["active"] == p.bool("active")]
    if p.str("code"):
        # Stripe matches the code regardless of case.
        objs = [o for o in objs if o["code"].lower() == p.req_str("code").lower()]
    if p.str("coupon"):
        objs = [o for o in objs if o["promotion"]["coupon"] == p.str("coupon")]
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    return paginate(objs, call, "/v1/promotion_codes")


ROUTES: list[Route] = [
    ("POST", "/v1/coupons", create_coupon),
    ("GET", "/v1/coupons", list_coupons),
    ("GET", "/v1/coupons/{id}", retrieve_coupon),
    ("POST", "/v1/coupons/{id}", update_coupon),
    ("DELETE", "/v1/coupons/{id}", delete_coupon),
    ("POST", "/v1/promotion_codes", create_promotion_code),
    ("GET", "/v1/promotion_codes", list_promotion_codes),
    ("GET", "/v1/promotion_codes/{id}", retrieve_promotion_code),
    ("POST", "/v1/promotion_codes/{id}", update_promotion_code),
]
