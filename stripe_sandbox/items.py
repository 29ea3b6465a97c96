"""A subscription's items and the invoice lines they make.

Billing periods live on the items (``items.data[].current_period_start/end``),
as in the current API; an invoice bills each licensed item for the period it
stands in (in advance). An item on a metered price (usage-based billing) has no
quantity: it bills what its meter counted for the customer over the period that
ended (in arrears), as a line of ``usage * unit_amount``; on a subscription's
first invoice it shows as a zero line, as on Stripe.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .errors import invalid
from .fixtures import template
from .ids import new_id
from .invoicing import LineSpec
from .metering import is_metered, meter_of, usage
from .sandbox import Sandbox
from .store import Obj, snapshot


@dataclass
class ItemSpec:
    price: Obj
    quantity: int | None = 1  # None for a metered price
    metadata: dict[str, str] | None = None


def item_quantity(price: Obj, given: int | None, param: str) -> int | None:
    """An item's quantity: 1 unless given; a metered price takes none."""
    if not is_metered(price):
        return 1 if given is None else given
    if given is not None:
        raise invalid(
            "Quantity should not be specified where usage_type is `metered`. "
            f"Remove quantity from `{param}`.",
            param=f"{param}[quantity]",
        )
    return None


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
        "meter": recurring.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": recurring.get("usage_type") or "licensed",
    }


def new_item(sub_id: str, spec: ItemSpec, start: int, end: int) -> Obj:
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
    if spec.quantity is None:
        del item["quantity"]  # metered: usage decides what is billed
    return item


def period_of(sub: Obj) -> tuple[int, int]:
    first = sub["items"]["data"][0]
    return int(first["current_period_start"]), int(first["current_period_end"])


def interval_of(price: Obj) -> tuple[str, int]:
    recurring = price["recurring"] or {}
    return str(recurring.get("interval", "month")), int(recurring.get("interval_count", 1))


def product_name(sb: Sandbox, price: Obj) -> str:
    product = sb.store.maybe("product", price["product"])
    return str(product["name"]) if product else str(price["product"])


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency.upper()}"


def _description(sb: Sandbox, price: Obj, quantity: Any) -> str:
    interval, _ = interval_of(price)
    return (
        f"{quantity} \N{MULTIPLICATION SIGN} {product_name(sb, price)}"
        f" (at {_money(price['unit_amount'], price['currency'])} / {interval})"
    )


def usage_line(
    sb: Sandbox, item: Obj, customer: str | None, period: tuple[int, int] | None
) -> LineSpec:
    """A metered item's line: what its meter counted over ``period`` (the period
    that ended) times the unit amount; zero over the item's own period when no
    period is given (a first invoice)."""
    price = item["price"]
    meter = meter_of(sb, price)
    start, end = period or (item["current_period_start"], item["current_period_end"])
    used = (
        usage(sb, meter, customer, start, end)
        if period is not None and meter is not None and customer is not None
        else Decimal(0)
    )
    amount = (used * int(price["unit_amount"])).to_integral_value(ROUND_HALF_UP)
    quantity = int(used.to_integral_value(ROUND_HALF_UP))
    return LineSpec(
        amount=int(amount),
        quantity=quantity,
        quantity_decimal=str(used.normalize()) if used else "0",
        price=price,
        subscription_item=item["id"],
        period_start=start,
        period_end=end,
        description=_description(sb, price, quantity),
    )


def cycle_lines(
    sb: Sandbox,
    items: list[Obj],
    *,
    customer: str | None = None,
    ended: tuple[int, int] | None = None,
) -> list[LineSpec]:
    """One line per item: a licensed item for the period it now stands in, a
    metered one for its usage over ``ended`` (the period that just ended) by
    ``customer``, or at zero without it."""
    lines = []
    for item in items:
        price = item["price"]
        if is_metered(price):
            lines.append(usage_line(sb, item, customer, ended))
            continue
        lines.append(
            LineSpec(
                amount=int(price["unit_amount"]) * int(item["quantity"]),
                quantity=item["quantity"],
                price=price,
                subscription_item=item["id"],
                period_start=item["current_period_start"],
                period_end=item["current_period_end"],
                description=_description(sb, price, item["quantity"]),
            )
        )
    return lines


def pending_item_lines(sb: Sandbox, sub: Obj) -> list[LineSpec]:
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
                    discountable=ii["discountable"],
                )
            )
    return lines
