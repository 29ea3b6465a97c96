"""Payment intents (create / confirm / retrieve / update / cancel / list) and charges."""

from __future__ import annotations

from .. import payments
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj

PI_FIELDS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "metadata",
    "description",
    "off_session",
    "setup_future_usage",
    "receipt_email",
    "automatic_payment_methods",
    "payment_method_types",
    "capture_method",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "return_url",
    "error_on_requires_action",
    "mandate",
    "confirmation_method",
    "shipping",
    "payment_method_options",
    "transfer_group",
    "on_behalf_of",
    "use_stripe_sdk",
    "excluded_payment_method_types",
    "customer_account",
}


def _confirm(sb: Sandbox, pi: Obj, pm_id: str | None, now: int) -> Obj:
    error = payments.confirm(sb, pi, pm_id, now)
    if error is not None:
        raise error
    pm = sb.store.maybe("payment_method", pi["payment_method"])
    customer = sb.store.maybe("customer", pi["customer"])
    if pi["setup_future_usage"] and pm and customer and pm["customer"] is None:
        payments.attach(sb, pm, customer)
    return pi


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(PI_FIELDS)
    amount = p.int("amount", req=True, minimum=1)
    assert amount is not None
    if amount < 50:
        raise invalid("Amount must be at least $0.50 usd", param="amount", code="amount_too_small")
    currency = p.req_str("currency").lower()
    customer_id = p.str("customer")
    if customer_id:
        sb.store.get("customer", customer_id, "customer")
    now = sb.now(sb.customer_clock(customer_id))
    pm_id = p.str("payment_method")
    if pm_id:
        pm_id = payments.resolve_payment_method(sb, pm_id, "payment_method", now)["id"]
    pi = payments.new_payment_intent(
        sb,
        amount=amount,
        currency=currency,
        customer=customer_id,
        created=now,
        payment_method=pm_id,
        metadata=merge_metadata({}, p.raw("metadata")),
        description=p.str("description"),
        setup_future_usage=p.str("setup_future_usage"),
        receipt_email=p.str("receipt_email"),
    )
    if p.bool("confirm"):
        _confirm(sb, pi, None, now)
    return pi


def retrieve(sb: Sandbox, call: Call) -> Obj:
    call.p({"client_secret"})
    return sb.store.get("payment_intent", call.match["id"])


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "metadata",
            "description",
            "payment_method",
            "amount",
            "receipt_email",
            "setup_future_usage",
            "customer",
            "currency",
        }
    )
    pi = sb.store.get("payment_intent", call.match["id"])
    if pi["status"] in ("succeeded", "canceled"):
        raise invalid(
            f"This PaymentIntent could not be updated because it has a status of {pi['status']}.",
            code="payment_intent_unexpected_state",
        )
    if p.has("metadata"):
        pi["metadata"] = merge_metadata(pi["metadata"], p.raw("metadata"))
    if p.has("amount"):
        pi["amount"] = p.int("amount", minimum=50)
    for key in ("description", "receipt_email", "setup_future_usage", "customer"):
        if p.has(key):
            pi[key] = p.str(key)
    if p.str("payment_method"):
        pm = payments.resolve_payment_method(
            sb, p.req_str("payment_method"), "payment_method", sb.now()
        )
        pi["payment_method"] = pm["id"]
        pi["status"] = "requires_confirmation"
    return pi


def confirm(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "payment_method",
            "off_session",
            "return_url",
            "setup_future_usage",
            "mandate",
            "error_on_requires_action",
            "use_stripe_sdk",
            "payment_method_options",
            "receipt_email",
            "client_secret",
        }
    )
    pi = sb.store.get("payment_intent", call.match["id"])
    if p.str("setup_future_usage"):
        pi["setup_future_usage"] = p.str("setup_future_usage")
    return _confirm(sb, pi, p.str("payment_method"), sb.now(sb.customer_clock(pi["customer"])))


def cancel(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"cancellation_reason"})
    pi = sb.store.get("payment_intent", call.match["id"])
    if pi["status"] in ("succeeded", "canceled"):
        raise invalid(
            f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}.",
            code="payment_intent_unexpected_state",
        )
    pi.update(
        {
            "status": "canceled",
            "canceled_at": sb.now(),
            "cancellation_reason": p.str("cancellation_reason") or "requested_by_customer",
        }
    )
    sb.events.emit("payment_intent.canceled", pi)
    return pi


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"customer", "customer_account"})
    objs = sb.store.all("payment_intent")
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    return paginate(objs, call, "/v1/payment_intents")


def retrieve_charge(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("charge", call.match["id"])


def list_charges(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"customer", "payment_intent", "transfer_group"})
    objs = sb.store.all("charge")
    if p.str("customer"):
        objs = [o for o in objs if o["customer"] == p.str("customer")]
    if p.str("payment_intent"):
        objs = [o for o in objs if o["payment_intent"] == p.str("payment_intent")]
    return paginate(objs, call, "/v1/charges")


ROUTES: list[Route] = [
    ("POST", "/v1/payment_intents", create),
    ("GET", "/v1/payment_intents", list_),
    ("GET", "/v1/payment_intents/{id}", retrieve),
    ("POST", "/v1/payment_intents/{id}", update),
    ("POST", "/v1/payment_intents/{id}/confirm", confirm),
    ("POST", "/v1/payment_intents/{id}/cancel", cancel),
    ("GET", "/v1/charges", list_charges),
    ("GET", "/v1/charges/{id}", retrieve_charge),
]
