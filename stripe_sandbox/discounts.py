"""Coupons, promotion codes and the discounts they become.

A coupon says how much comes off (``percent_off``, or ``amount_off`` in one
currency) and for how long (``once``: the first invoice, ``repeating``:
``duration_in_months``, ``forever``).  A promotion code is a customer-facing
code for a coupon (``promotion.coupon`` in the current API), with its own
redemption limits.  Redeeming either on a subscription or a checkout session
creates a ``discount`` object (``di_...``, the coupon at ``source.coupon``);
invoices list the discounts that applied (``discounts``) and how much each
took off per line (``discount_amounts``) and in total
(``total_discount_amounts``).  Percentages apply to every discountable line,
prorations included (billing mode ``flexible`` with ``proration_discounts:
included``, the default); a fixed amount is spread over the positive lines in
proportion and never exceeds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clock import add_interval
from .errors import invalid
from .fixtures import template
from .ids import new_id
from .sandbox import Sandbox
from .store import Obj

DURATIONS = ("once", "repeating", "forever")


@dataclass
class Redemption:
    """A coupon about to be applied, and the promotion code it came through."""

    coupon: Obj
    promotion_code: Obj | None = None


# -- validity ---------------------------------------------------------------


def refresh_validity(coupon: Obj, now: int) -> Obj:
    """``valid`` turns false once the coupon can no longer be redeemed."""
    exhausted = (
        coupon["max_redemptions"] is not None
        and coupon["times_redeemed"] >= coupon["max_redemptions"]
    )
    expired = coupon["redeem_by"] is not None and coupon["redeem_by"] <= now
    coupon["valid"] = not (exhausted or expired)
    return coupon


def _redeemable_coupon(sb: Sandbox, coupon_id: str, param: str, now: int) -> Obj:
    coupon = sb.store.get("coupon", coupon_id, param)
    if not refresh_validity(coupon, now)["valid"]:
        raise invalid(f"Coupon {coupon_id} is no longer valid.", param=param)
    return coupon


def _has_paid_before(sb: Sandbox, customer_id: str | None) -> bool:
    return any(
        c["customer"] == customer_id and c["status"] == "succeeded"
        for c in sb.store.objects["charge"].values()
    )


def _redeemable_promotion_code(
    sb: Sandbox,
    promo_id: str,
    param: str,
    *,
    now: int,
    customer_id: str | None,
    amount: int | None,
) -> Redemption:
    promo = sb.store.get("promotion_code", promo_id, param)
    code = promo["code"]
    if not promo["active"]:
        raise invalid(f"This promotion code ({code}) is inactive.", param=param)
    if promo["expires_at"] is not None and promo["expires_at"] <= now:
        raise invalid(f"This promotion code ({code}) has expired.", param=param)
    if promo["max_redemptions"] is not None and promo["times_redeemed"] >= promo["max_redemptions"]:
        raise invalid(
            f"This promotion code ({code}) has reached its maximum number of redemptions.",
            param=param,
        )
    if promo["customer"] is not None and promo["customer"] != customer_id:
        raise invalid(
            f"This promotion code ({code}) cannot be redeemed by this customer.", param=param
        )
    restrictions = promo["restrictions"]
    if restrictions["first_time_transaction"] and _has_paid_before(sb, customer_id):
        raise invalid(
            f"This promotion code ({code}) can only be redeemed on a customer's first transaction.",
            param=param,
        )
    minimum = restrictions["minimum_amount"]
    if minimum is not None and amount is not None and amount < minimum:
        raise invalid(
            f"This promotion code ({code}) requires a minimum amount of {minimum} "
            f"{restrictions['minimum_amount_currency']}.",
            param=param,
        )
    coupon = _redeemable_coupon(sb, promo["promotion"]["coupon"], param, now)
    return Redemption(coupon, promo)


def resolve(
    sb: Sandbox,
    entries: list[Any],
    *,
    param: str,
    now: int,
    customer_id: str | None,
    amount: int | None = None,
) -> list[Redemption]:
    """Validate ``discounts=[{coupon}|{promotion_code}]`` as Stripe does before applying."""
    redemptions = []
    for index, entry in enumerate(entries):
        item = entry if isinstance(entry, dict) else {}
        key = f"{param}[{index}]"
        given = [k for k in ("coupon", "promotion_code", "discount") if item.get(k)]
        if len(given) != 1:
            raise invalid(
                f"You must pass exactly one of coupon, promotion_code or discount in {key}.",
                param=key,
            )
        if given[0] == "coupon":
            redemptions.append(
                Redemption(_redeemable_coupon(sb, item["coupon"], f"{key}[coupon]", now))
            )
        elif given[0] == "promotion_code":
            redemptions.append(
                _redeemable_promotion_code(
                    sb,
                    item["promotion_code"],
                    f"{key}[promotion_code]",
                    now=now,
                    customer_id=customer_id,
                    amount=amount,
                )
            )
        else:
            existing = sb.store.get("discount", item["discount"], f"{key}[discount]")
            coupon = coupon_of(sb, existing)
            promo = sb.store.maybe("promotion_code", existing["promotion_code"])
            redemptions.append(Redemption(coupon, promo))
    coupon_ids = [r.coupon["id"] for r in redemptions]
    if len(set(coupon_ids)) != len(coupon_ids):
        raise invalid("The same coupon cannot be applied more than once.", param=param)
    return redemptions


# -- discount objects ---------------------------------------------------------


def redeem(
    sb: Sandbox,
    redemption: Redemption,
    *,
    start: int,
    customer: str | None,
    subscription: str | None = None,
    checkout_session: str | None = None,
    invoice: str | None = None,
) -> Obj:
    """Turn a coupon (or promotion code) into a discount, counting the redemption."""
    coupon, promo = redemption.coupon, redemption.promotion_code
    discount = template("discount")
    discount.update(
        {
            "id": new_id("di"),
            "object": "discount",
            "checkout_session": checkout_session,
            "customer": customer,
            "customer_account": None,
            # Only a repeating coupon ends on a date; once and forever have none.
            "end": add_interval(start, "month", int(coupon["duration_in_months"]))
            if coupon["duration"] == "repeating"
            else None,
            "invoice": invoice,
            "invoice_item": None,
            "promotion_code": promo["id"] if promo else None,
            "source": {"coupon": coupon["id"], "type": "coupon"},
            "start": start,
            "subscription": subscription,
            "subscription_item": None,
        }
    )
    sb.store.add("discount", discount)
    coupon["times_redeemed"] += 1
    refresh_validity(coupon, start)
    if promo is not None:
        promo["times_redeemed"] += 1
    if subscription is not None:
        sb.events.emit("customer.discount.created", discount)
    return discount


def coupon_of(sb: Sandbox, discount: Obj) -> Obj:
    coupon_id = discount["source"]["coupon"]
    retired = sb.store.retired_coupons.get(coupon_id)
    return retired if retired is not None else sb.store.get("coupon", coupon_id)


def still_applies(sb: Sandbox, discount: Obj, at: int) -> bool:
    """Whether a subscription discount covers an invoice created at ``at``."""
    coupon = coupon_of(sb, discount)
    if coupon["duration"] == "once":
        return sb.store.discount_uses.get(discount["id"], 0) == 0
    if coupon["duration"] == "repeating":
        return discount["end"] is None or at < discount["end"]
    return True


def active_on(sb: Sandbox, sub: Obj, at: int) -> list[str]:
    """The subscription's discounts that cover an invoice made at ``at``."""
    return [d for d in sub["discounts"] if still_applies(sb, sb.store.get("discount", d), at)]


# -- amounts ------------------------------------------------------------------


def _eligible(sb: Sandbox, coupon: Obj, line: Obj) -> bool:
    if not line.get("discountable", True):
        return False
    products = sb.store.coupon_products.get(coupon["id"])
    if not products:
        return True
    price_details = (line.get("pricing") or {}).get("price_details") or {}
    product = price_details.get("product") or (line.get("price") or {}).get("product")
    return product in products


def _amount_of(line: Obj) -> int:
    # Invoice lines carry ``amount``; checkout line items ``amount_subtotal``.
    return int(line["amount"] if "amount" in line else line["amount_subtotal"])


def allocate(
    sb: Sandbox, lines: list[Obj], discounts: list[Obj], currency: str
) -> list[list[tuple[str, int]]]:
    """Per line, the (discount id, amount taken off) pairs, in the order discounts apply."""
    taken: list[list[tuple[str, int]]] = [[] for _ in lines]
    for discount in discounts:
        coupon = coupon_of(sb, discount)
        eligible = [i for i, line in enumerate(lines) if _eligible(sb, coupon, line)]
        if coupon["percent_off"] is not None:
            for i in eligible:
                off = round(_amount_of(lines[i]) * float(coupon["percent_off"]) / 100)
                if off:
                    taken[i].append((discount["id"], off))
            continue
        if coupon["amount_off"] is None or coupon["currency"] != currency:
            continue
        room = {
            i: _amount_of(lines[i]) - sum(a for _, a in taken[i])
            for i in eligible
            if _amount_of(lines[i]) - sum(a for _, a in taken[i]) > 0
        }
        total_room = sum(room.values())
        budget = min(int(coupon["amount_off"]), total_room)
        if budget <= 0:
            continue
        spent = 0
        indices = sorted(room)
        for position, i in enumerate(indices):
            share = (
                budget - spent if position == len(indices) - 1 else budget * room[i] // total_room
            )
            spent += share
            if share:
                taken[i].append((discount["id"], share))
    return taken


def totals(taken: list[list[tuple[str, int]]], order: list[str]) -> list[dict[str, Any]]:
    """``total_discount_amounts``: each discount's amount across all lines."""
    sums: dict[str, int] = dict.fromkeys(order, 0)
    for pairs in taken:
        for discount_id, amount in pairs:
            sums[discount_id] = sums.get(discount_id, 0) + amount
    return [{"amount": amount, "discount": discount_id} for discount_id, amount in sums.items()]
