"""Payment intents (create / confirm / retrieve / update / cancel / list) and charges.

Confirming from the browser (stripe.js, Elements) uses the publishable key and
the intent's ``client_secret``; confirming an invoice's payment intent that way
pays the invoice, as on Stripe (see :mod:`collection`).
"""

from __future__ import annotations

from .. import collection, invoicing, methods, payments
from ..api import LIST_PARAMS, Call, Route, paginate, require_client_secret
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
    "mandate_data",
    "confirmation_method",
    "shipping",
    "payment_method_options",
    "transfer_group",
    "on_behalf_of",
    "use_stripe_sdk",
    "excluded_payment_method_types",
    "customer_account",
}
PAYMENT_METHOD_TYPES = ("card", "us_bank_account")


def _after_success(sb: Sandbox, pi: Obj) -> None:
    """``setup_future_usage`` saves the payment method to the customer once it worked."""
    pm = sb.store.maybe("payment_method", pi["payment_method"])
    customer = sb.store.maybe("customer", pi["customer"])
    if pi["setup_future_usage"] and pm and customer and pm["customer"] is None:
        methods.attach(sb, pm, customer, verified=True)


def _confirm(
    sb: Sandbox,
    pi: Obj,
    pm_id: str | None,
    now: int,
    *,
    off_session: bool,
    error_on_requires_action: bool = False,
) -> Obj:
    invoice = invoicing.invoice_for(sb, pi)
    if invoice is not None:
        error = collection.confirm_from_client(sb, invoice, pi, pm_id, now)
    else:
        error = payments.confirm(sb, pi, pm_id, now, off_session=off_session)
    if error is not None:
        raise error
    if pi["status"] == "requires_action" and error_on_requires_action:
        raise methods.card_error("authentication_required")
    if pi["status"] in ("succeeded", "processing"):
        _after_success(sb, pi)
    return pi


def _payment_method_types(raw: list[object]) -> list[str]:
    types = [str(t) for t in raw] or ["card"]
    for value in types:
        if value not in PAYMENT_METHOD_TYPES:
            raise invalid(
                f"The payment method type provided: {value} is invalid. The sandbox supports "
                f"{', '.join(PAYMENT_METHOD_TYPES)}.",
                param="payment_method_types",
            )
    return types


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
        pm_id = methods.resolve_payment_method(sb, pm_id, "payment_method", now)["id"]
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
        payment_method_types=_payment_method_types(p.list("payment_method_types")),
    )
    if p.bool("confirm"):
        _confirm(
            sb,
            pi,
            None,
            now,
            off_session=p.bool("off_session"),
            error_on_requires_action=p.bool("error_on_requires_action"),
        )
    return pi


def retrieve(sb: Sandbox, call: Call) -> Obj:
    call.p({"client_secret"})
    pi = sb.store.get("payment_intent", call.match["id"])
    require_client_secret(call, pi)
    return pi


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
            "payment_method_types",
        }
    )
    pi = sb.store.get("payment_intent", call.match["id"])
    if pi["status"] in ("succeeded", "canceled", "processing"):
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
    if p.has("payment_method_types"):
        pi["payment_method_types"] = _payment_method_types(p.list("payment_method_types"))
    if p.str("payment_method"):
        pm = methods.resolve_payment_method(
            sb, p.req_str("payment_method"), "payment_method", sb.time_of(pi)
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
            "mandate_data",
            "error_on_requires_action",
            "use_stripe_sdk",
            "payment_method_options",
            "payment_method_data",
            "receipt_email",
            "client_secret",
            "expected_payment_method_type",
        }
    )
    pi = sb.store.get("payment_intent", call.match["id"])
    require_client_secret(call, pi)
    if p.str("setup_future_usage"):
        pi["setup_future_usage"] = p.str("setup_future_usage")
    return _confirm(
        sb,
        pi,
        p.str("payment_method"),
        sb.time_of(pi),
        # The browser confirms with the customer present; only the server can say otherwise.
        off_session=p.bool("off_session") and not call.publishable,
        error_on_requires_action=p.bool("error_on_requires_action"),
    )


def cancel(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"cancellation_reason"})
    pi = sb.store.get("payment_intent", call.match["id"])
    if invoicing.invoice_for(sb, pi) is not None:
        raise invalid(
            "You cannot cancel this PaymentIntent because it was created by an invoice. "
            "Void the invoice instead.",
            code="payment_intent_unexpected_state",
        )
    return payments.cancel(
        sb, pi, sb.time_of(pi), p.str("cancellation_reason") or "requested_by_customer"
    )


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
