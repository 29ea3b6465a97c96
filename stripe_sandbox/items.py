"""A subscription's items and the invoice lines they make.

Billing periods live on the items (``items.data[].current_period_start/end``),
as in the current API; an invoice bills each item for the period it stands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fixtures import template
from .ids import new_id
from .invoicing import LineSpec
from .sandbox import Sandbox
from .store import Obj, snapshot


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


def cycle_lines(sb: Sandbox, items: list[Obj]) -> list[LineSpec]:
    """One line per item for the period the items now stand in."""
    lines = []
    for item in items:
        price = item["price"]
        interval, _ = interval_of(price)
        lines.append(
            LineSpec(
                amount=int(price["unit_amount"]) * int(item["quantity"]),
                quantity=item["quantity"],
                price=price,
                subscription_item=item["id"],
                period_start=item["current_period_start"],
                period_end=item["current_period_end"],
                description=(
                    f"{item['quantity']} \N{MULTIPLICATION SIGN} {product_name(sb, price)}"
                    f" (at {_money(price['unit_amount'], price['currency'])} / {interval})"
                ),
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
