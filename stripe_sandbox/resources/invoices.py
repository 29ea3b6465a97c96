"""Invoices (retrieve, list, pay, void, mark uncollectible, finalize, one-off),
invoice items and invoice payments."""

from __future__ import annotations

from .. import collection, invoicing, previews, prorations
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..invoicing import LineSpec
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj


def _invoice(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("invoice", call.match["id"])


def _now(sb: Sandbox, invoice: Obj) -> int:
    return sb.now(invoice["test_clock"])


def retrieve(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    return _invoice(sb, call)


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        LIST_PARAMS
        | {
            "customer",
            "subscription",
            "status",
            "collection_method",
            "due_date",
            "customer_account",
        }
    )
    objs = sb.store.all("invoice")
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.str("subscription"):
        objs = [
            o
            for o in objs
            if (invoicing.subscription_of(sb, o) or {}).get("id") == p.str("subscription")
        ]
    if p.str("status"):
        objs = [o for o in objs if o["status"] == p.str("status")]
    return paginate(objs, call, "/v1/invoices")


def lines(sb: Sandbox, call: Call) -> Obj:
    call.p(LIST_PARAMS)
    invoice = _invoice(sb, call)
    return paginate(list(invoice["lines"]["data"]), call, f"/v1/invoices/{invoice['id']}/lines")


def pay(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {"payment_method", "off_session", "paid_out_of_band", "source", "forgive", "mandate"}
    )
    invoice = _invoice(sb, call)
    now = _now(sb, invoice)
    if invoice["status"] == "draft":
        invoicing.finalize(sb, invoice, now)
        if invoice["amount_due"] == 0:
            collection.mark_paid(sb, invoice, now)
            return invoice
    if p.bool("paid_out_of_band"):
        if invoice["status"] != "open":
            raise invalid("Invoice is already paid", code="invoice_already_paid")
        collection.pay_out_of_band(sb, invoice, now)
        return invoice
    # Paying through the API charges without the customer present (off-session),
    # unless the call says it is made on the customer's behalf in session.
    error = collection.attempt(
        sb,
        invoice,
        now,
        payment_method=p.str("payment_method"),
        off_session=p.bool("off_session", default=True),
    )
    if error is not None:
        raise error
    return invoice


def void(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    invoice = _invoice(sb, call)
    return collection.void(sb, invoice, _now(sb, invoice))


def mark_uncollectible(sb: Sandbox, call: Call) -> Obj:
    call.p(set())
    invoice = _invoice(sb, call)
    return collection.mark_uncollectible(sb, invoice, _now(sb, invoice))


def finalize(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"auto_advance"})
    invoice = _invoice(sb, call)
    now = _now(sb, invoice)
    invoicing.finalize(sb, invoice, now)
    if invoice["amount_due"] == 0:
        collection.mark_paid(sb, invoice, now)
    elif p.bool("auto_advance", default=bool(invoice["auto_advance"])):
        collection.attempt(sb, invoice, now, automatic=True)
    return invoice


def create_preview(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "customer",
            "subscription",
            "subscription_details",
            "currency",
            "discounts",
            "invoice_items",
            "preview_mode",
            "automatic_tax",
            "customer_details",
            "schedule",
            "schedule_details",
            "issuer",
            "on_behalf_of",
            "customer_account",
        }
    )
    return previews.create_preview(sb, p)


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"metadata", "description", "default_payment_method", "auto_advance", "footer"})
    invoice = _invoice(sb, call)
    if p.has("metadata"):
        invoice["metadata"] = merge_metadata(invoice["metadata"], p.raw("metadata"))
    for key in ("description", "default_payment_method", "footer"):
        if p.has(key):
            invoice[key] = p.str(key)
    if p.has("auto_advance"):
        invoice["auto_advance"] = p.bool("auto_advance")
    sb.events.emit("invoice.updated", invoice)
    return invoice


def create(sb: Sandbox, call: Call) -> Obj:
    """A one-off invoice collecting the customer's pending (non-subscription) invoice items."""
    p = call.p(
        {
            "customer",
            "auto_advance",
            "description",
            "metadata",
            "collection_method",
            "pending_invoice_items_behavior",
            "currency",
            "default_payment_method",
            "days_until_due",
            "subscription",
        }
    )
    customer = sb.store.get("customer", p.req_str("customer"), "customer")
    now = sb.now(customer["test_clock"])
    specs = []
    if p.str("pending_invoice_items_behavior") == "include":
        for ii in reversed(sb.store.all("invoiceitem")):
            if ii["customer"] == customer["id"] and ii["invoice"] is None and not ii["parent"]:
                specs.append(
                    LineSpec(
                        amount=ii["amount"],
                        description=ii["description"],
                        quantity=ii["quantity"],
                        invoice_item=ii["id"],
                        period_start=ii["period"]["start"],
                        period_end=ii["period"]["end"],
                        discountable=ii["discountable"],
                    )
                )
    invoice = invoicing.new_invoice(
        sb,
        customer=customer,
        subscription=None,
        billing_reason="manual",
        lines=specs,
        period_start=now,
        period_end=now,
        created=now,
        currency=p.str("currency") or "usd",
        description=p.str("description"),
        metadata=merge_metadata({}, p.raw("metadata")),
    )
    invoice["auto_advance"] = p.bool("auto_advance", default=False)
    invoice["default_payment_method"] = p.str("default_payment_method")
    return invoice


def create_invoice_item(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "customer",
            "amount",
            "currency",
            "description",
            "metadata",
            "invoice",
            "price",
            "quantity",
            "pricing",
            "period",
            "subscription",
            "discountable",
            "unit_amount_decimal",
            "price_data",
        }
    )
    customer = sb.store.get("customer", p.req_str("customer"), "customer")
    now = sb.now(customer["test_clock"])
    quantity = p.int("quantity", minimum=1) or 1
    pricing = p.dict("pricing")
    price_id = p.str("price") or pricing.get("price")
    price = sb.store.get("price", price_id, "price") if price_id else None
    if price is not None:
        amount = int(price["unit_amount"]) * quantity
    else:
        given = p.int("amount")
        if given is None:
            raise invalid(
                "Missing required param: amount.", param="amount", code="parameter_missing"
            )
        amount = given
    sub = (
        sb.store.get("subscription", p.str("subscription"), "subscription")
        if p.str("subscription")
        else None
    )
    ii = prorations.new_invoice_item(
        sb,
        customer,
        sub,
        amount=amount,
        description=p.str("description") or "Invoice item",
        price=price,
        quantity=quantity,
        period=(now, now),
        proration=False,
        now=now,
        currency=p.str("currency") or "usd",
        metadata=merge_metadata({}, p.raw("metadata")),
    )
    target = p.str("invoice")
    if target:
        invoice = sb.store.get("invoice", target, "invoice")
        if invoice["status"] != "draft":
            raise invalid("You can only add invoice items to draft invoices.", param="invoice")
        invoicing.attach_item(sb, invoice, ii)
    return ii


def retrieve_invoice_item(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("invoiceitem", call.match["id"])


def list_invoice_items(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"customer", "invoice", "pending"})
    objs = sb.store.all("invoiceitem")
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.str("invoice"):
        objs = [o for o in objs if o["invoice"] == p.str("invoice")]
    if p.has("pending"):
        objs = [o for o in objs if (o["invoice"] is None) == p.bool("pending")]
    return paginate(objs, call, "/v1/invoiceitems")


def list_invoice_payments(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"invoice", "payment", "status"})
    objs = sb.store.all("invoice_payment")
    if p.str("invoice"):
        objs = [o for o in objs if o["invoice"] == p.str("invoice")]
    if p.str("status"):
        objs = [o for o in objs if o["status"] == p.str("status")]
    payment = p.dict("payment")
    if payment.get("payment_intent"):
        objs = [o for o in objs if o["payment"].get("payment_intent") == payment["payment_intent"]]
    return paginate(objs, call, "/v1/invoice_payments")


def retrieve_invoice_payment(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("invoice_payment", call.match["id"])


ROUTES: list[Route] = [
    ("POST", "/v1/invoices", create),
    ("POST", "/v1/invoices/create_preview", create_preview),
    ("GET", "/v1/invoices", list_),
    ("GET", "/v1/invoices/{id}", retrieve),
    ("POST", "/v1/invoices/{id}", update),
    ("GET", "/v1/invoices/{id}/lines", lines),
    ("POST", "/v1/invoices/{id}/pay", pay),
    ("POST", "/v1/invoices/{id}/void", void),
    ("POST", "/v1/invoices/{id}/mark_uncollectible", mark_uncollectible),
    ("POST", "/v1/invoices/{id}/finalize", finalize),
    ("POST", "/v1/invoiceitems", create_invoice_item),
    ("GET", "/v1/invoiceitems", list_invoice_items),
    ("GET", "/v1/invoiceitems/{id}", retrieve_invoice_item),
    ("GET", "/v1/invoice_payments", list_invoice_payments),
    ("GET", "/v1/invoice_payments/{id}", retrieve_invoice_payment),
]
