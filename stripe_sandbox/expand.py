"""``expand[]``: replace ids by objects along dotted paths, on a copy of the response.

Also materialises the *includable* fields that Stripe only returns when asked
for: the invoice's ``confirmation_secret``, ``payments`` and (for older
integrations) ``payment_intent``, and a coupon's ``applies_to``.
"""

from __future__ import annotations

import copy
from typing import Any

from . import invoicing
from .errors import invalid
from .sandbox import Sandbox

MAX_DEPTH = 4


def _includable(sb: Sandbox, obj: dict[str, Any], field: str) -> tuple[bool, Any]:
    if obj.get("object") == "coupon" and field == "applies_to":
        products = sb.store.coupon_products.get(str(obj.get("id")))
        return True, {"products": products} if products else None
    if obj.get("object") != "invoice":
        return False, None
    invoice = sb.store.maybe("invoice", obj.get("id"))
    if invoice is None:
        return False, None
    if field == "confirmation_secret":
        return True, invoicing.confirmation_secret(sb, invoice)
    if field == "payment_intent":
        pi = invoicing.payment_intent_for(sb, invoice)
        return True, pi["id"] if pi else None
    if field == "payments":
        records = invoicing.invoice_payments(sb, invoice["id"])
        return True, {
            "object": "list",
            "data": copy.deepcopy(records),
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={invoice['id']}",
        }
    return False, None


def _expand(sb: Sandbox, value: Any, parts: list[str], path: str) -> None:
    if not parts:
        return
    if isinstance(value, list):
        for element in value:
            _expand(sb, element, parts, path)
        return
    if not isinstance(value, dict):
        return
    head, rest = parts[0], parts[1:]
    handled, included = _includable(sb, value, head)
    if handled:
        value[head] = included
    elif head not in value:
        raise invalid(f"This property cannot be expanded ({path}).", param="expand")
    child = value[head]
    if isinstance(child, list):
        # A list of ids (``discounts``) expands element by element.
        child = [_resolve(sb, element) for element in child]
    else:
        child = _resolve(sb, child)
    value[head] = child
    _expand(sb, child, rest, path)


def _resolve(sb: Sandbox, value: Any) -> Any:
    if isinstance(value, str):
        target = sb.store.lookup_any(value)
        if target is not None:
            return copy.deepcopy(target)
    return value


def expand(sb: Sandbox, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_DEPTH:
            raise invalid("You cannot expand more than 4 levels of a property.", param="expand")
        _expand(sb, obj, parts, path)
    return obj
