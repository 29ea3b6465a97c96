"""Customers: create / retrieve / update / delete / list (``email`` filter)."""

from __future__ import annotations

from typing import Any

from .. import lifecycle, methods
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..events import changed
from ..fixtures import template
from ..ids import new_id, token
from ..params import Params, merge_metadata, parse_int
from ..sandbox import Sandbox
from ..store import Obj, snapshot

FIELDS = {
    "email",
    "name",
    "description",
    "phone",
    "metadata",
    "payment_method",
    "invoice_settings",
    "test_clock",
    "address",
    "shipping",
    "preferred_locales",
    "balance",
    "tax_exempt",
    "invoice_prefix",
    "source",
    "tax",
    "tax_id_data",
    "next_invoice_sequence",
    "cash_balance",
    "validate",
}


def _set_default_pm(sb: Sandbox, customer: Obj, settings: dict[str, Any]) -> None:
    """``invoice_settings[default_payment_method]``: a payment method of this customer."""
    if "default_payment_method" not in settings:
        return
    pm_id = settings["default_payment_method"] or None
    if pm_id is not None:
        pm = sb.store.maybe("payment_method", pm_id)
        if pm is None or pm["customer"] != customer["id"]:
            raise invalid(
                f"No such PaymentMethod: '{pm_id}'; It's possible this PaymentMethod exists "
                "on one of your connected accounts, in which case you should retry this "
                "request on that connected account."
                if pm is None
                else f"The customer does not have a payment method with the ID {pm_id}. The "
                "payment method must be attached to the customer.",
                param="invoice_settings[default_payment_method]",
                code="resource_missing",
            )
    customer["invoice_settings"]["default_payment_method"] = pm_id


def _apply(sb: Sandbox, customer: Obj, p: Params) -> None:
    for key in ("email", "name", "description", "phone"):
        if p.has(key):
            customer[key] = p.str(key)
    if p.has("metadata"):
        customer["metadata"] = merge_metadata(customer["metadata"], p.raw("metadata"))
    if p.has("balance"):
        customer["balance"] = parse_int(p.raw("balance"), "balance") or 0
    if p.has("address"):
        customer["address"] = {**methods.EMPTY_ADDRESS, **p.dict("address")} or None
    if p.has("preferred_locales"):
        customer["preferred_locales"] = p.list("preferred_locales")
    if p.has("tax_exempt"):
        customer["tax_exempt"] = p.str("tax_exempt") or "none"


def create(sb: Sandbox, call: Call) -> Obj:
    """A customer, optionally with a first payment method, which may be a test token.

    Stripe's documented test setup, ``payment_method=pm_card_visa`` with
    ``invoice_settings[default_payment_method]=pm_card_visa``, makes one payment
    method from the token, attaches it and makes it the default.
    """
    p = call.p(FIELDS)
    clock_id = p.str("test_clock")
    if clock_id:
        sb.store.get("test_clock", clock_id, "test_clock")
    now = sb.now(clock_id)
    customer = template("customer")
    customer.update(
        {
            "id": new_id("cus", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": p.str("invoice_prefix") or token(8).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": clock_id,
            "customer_account": None,
        }
    )
    _apply(sb, customer, p)
    pm = None
    given = p.str("payment_method")
    if given:
        pm = methods.resolve_payment_method(sb, given, "payment_method", now)
        # Stripe verifies the card before it creates anything.
        methods.verify_for_saving(sb, pm)
    default = p.dict("invoice_settings").get("default_payment_method")
    if default:
        # A new customer's only payment method is the one given with it.
        if pm is None or default not in (given, pm["id"]):
            raise invalid(
                f"The customer does not have a payment method with the ID {default}. The "
                "payment method must be attached to the customer.",
                param="invoice_settings[default_payment_method]",
                code="resource_missing",
            )
        customer["invoice_settings"]["default_payment_method"] = pm["id"]
    sb.store.add("customer", customer)
    if pm is not None:
        pm["customer"] = customer["id"]
    sb.events.emit("customer.created", customer)
    if pm is not None:
        sb.events.emit("payment_method.attached", pm)
    return customer


def retrieve(sb: Sandbox, call: Call) -> Obj:
    object_id = call.match["id"]
    if object_id in sb.store.deleted:
        return {"id": object_id, "object": "customer", "deleted": True}
    return sb.store.get("customer", object_id)


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p(FIELDS - {"test_clock", "payment_method"} | {"default_source"})
    customer = sb.store.get("customer", call.match["id"])
    before = snapshot(customer)
    _apply(sb, customer, p)
    _set_default_pm(sb, customer, p.dict("invoice_settings"))
    diff = changed(before, customer)
    if diff:
        sb.events.emit("customer.updated", customer, diff)
    return customer


def delete(sb: Sandbox, call: Call) -> Obj:
    customer = sb.store.get("customer", call.match["id"])
    now = sb.now(customer["test_clock"])
    for sub in sb.store.all("subscription"):
        if sub["customer"] == customer["id"] and sub["status"] not in (
            "canceled",
            "incomplete_expired",
        ):
            lifecycle.cancel_now(sb, sub, now)
    sb.store.remove("customer", customer["id"])
    sb.events.emit("customer.deleted", customer)
    return {"id": customer["id"], "object": "customer", "deleted": True}


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"email", "test_clock"})
    objs = sb.store.all("customer")
    if p.str("email"):
        objs = [c for c in objs if c["email"] == p.str("email")]
    if p.str("test_clock"):
        objs = [c for c in objs if c["test_clock"] == p.str("test_clock")]
    return paginate(objs, call, "/v1/customers")


def list_payment_methods(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"type", "allow_redisplay"})
    customer = sb.store.get("customer", call.match["id"])
    objs = [pm for pm in sb.store.all("payment_method") if pm["customer"] == customer["id"]]
    if p.str("type"):
        objs = [pm for pm in objs if pm["type"] == p.str("type")]
    return paginate(objs, call, f"/v1/customers/{customer['id']}/payment_methods")


def retrieve_payment_method(sb: Sandbox, call: Call) -> Obj:
    customer = sb.store.get("customer", call.match["id"])
    pm = sb.store.get("payment_method", call.match["pm"])
    if pm["customer"] != customer["id"]:
        raise invalid(
            f"No such PaymentMethod: '{pm['id']}'", param="payment_method", code="resource_missing"
        )
    return pm


ROUTES: list[Route] = [
    ("POST", "/v1/customers", create),
    ("GET", "/v1/customers", list_),
    ("GET", "/v1/customers/{id}", retrieve),
    ("POST", "/v1/customers/{id}", update),
    ("DELETE", "/v1/customers/{id}", delete),
    ("GET", "/v1/customers/{id}/payment_methods", list_payment_methods),
    ("GET", "/v1/customers/{id}/payment_methods/{pm}", retrieve_payment_method),
]
