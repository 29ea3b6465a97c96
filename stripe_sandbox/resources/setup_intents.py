"""SetupIntents: save a payment method to a customer for later, off-session payments.

Confirming checks the card with its issuer (a decline card fails with
``setup_intent.setup_failed`` and a 402, nothing is attached), asks the customer
to authenticate when the card needs 3D Secure (``requires_action``; the sandbox
control ``/_sandbox/setup_intents/{id}/authenticate`` plays the customer), and
on success attaches the payment method to the customer
(``payment_method.attached``, ``setup_intent.succeeded``).  stripe.js confirms
with the publishable key and the intent's ``client_secret``.
"""

from __future__ import annotations

from typing import Any

from .. import methods
from ..api import LIST_PARAMS, Call, Route, paginate, require_client_secret
from ..cards import decline_details
from ..errors import StripeError, invalid
from ..fixtures import template
from ..ids import new_id, token
from ..params import merge_metadata
from ..sandbox import Sandbox
from ..store import Obj, snapshot

FIELDS = {
    "customer",
    "usage",
    "payment_method_types",
    "payment_method",
    "confirm",
    "metadata",
    "description",
    "return_url",
    "automatic_payment_methods",
    "use_stripe_sdk",
    "mandate_data",
    "single_use",
    "payment_method_options",
    "payment_method_data",
    "attach_to_self",
    "flow_directions",
    "on_behalf_of",
    "excluded_payment_method_types",
    "customer_account",
    "confirmation_token",
}
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
PAYMENT_METHOD_TYPES = ("card", "us_bank_account")


def _new(sb: Sandbox, p: Any, customer: Obj | None, now: int) -> Obj:
    si = template("setup_intent")
    si_id = new_id("seti")
    types = [str(t) for t in p.list("payment_method_types")] or ["card"]
    for value in types:
        if value not in PAYMENT_METHOD_TYPES:
            raise invalid(
                f"The payment method type provided: {value} is invalid.",
                param="payment_method_types",
            )
    usage = p.str("usage") or "off_session"
    if usage not in ("on_session", "off_session"):
        raise invalid(f"Invalid usage: {usage}", param="usage")
    si.update(
        {
            "id": si_id,
            "object": "setup_intent",
            "application": None,
            "automatic_payment_methods": None,
            "cancellation_reason": None,
            "client_secret": f"{si_id}_secret_{token(32)}",
            "created": now,
            "customer": customer["id"] if customer else None,
            "customer_account": None,
            "description": p.str("description"),
            "excluded_payment_method_types": None,
            "flow_directions": None,
            "last_setup_error": None,
            "latest_attempt": None,
            "livemode": False,
            "mandate": None,
            "metadata": merge_metadata({}, p.raw("metadata")),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": types,
            "single_use_mandate": None,
            "status": "requires_payment_method",
            "usage": usage,
        }
    )
    sb.store.add("setup_intent", si)
    return si


def _fail(sb: Sandbox, si: Obj, pm: Obj, decline: str) -> StripeError:
    code, message = decline_details(decline)
    si.update(
        {
            "status": "requires_payment_method",
            "next_action": None,
            "payment_method": None,
            "last_setup_error": {
                "type": "card_error",
                "code": code,
                "decline_code": decline,
                "message": message,
                "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"),
                "payment_method": snapshot(pm),
            },
        }
    )
    sb.events.emit("setup_intent.setup_failed", si)
    return methods.card_error(decline, extra={"setup_intent": snapshot(si)})


def _succeed(sb: Sandbox, si: Obj, pm: Obj) -> None:
    customer = sb.store.maybe("customer", si["customer"])
    if customer is not None:
        methods.attach(sb, pm, customer, verified=True)
    si.update(
        {
            "status": "succeeded",
            "payment_method": pm["id"],
            "next_action": None,
            "last_setup_error": None,
        }
    )
    sb.events.emit("setup_intent.succeeded", si)


def confirm_with(sb: Sandbox, si: Obj, pm_value: str | None, now: int) -> Obj:
    if si["status"] not in CONFIRMABLE:
        raise invalid(
            f"You cannot confirm this SetupIntent because it has a status of {si['status']}.",
            code="setup_intent_unexpected_state",
        )
    chosen = pm_value or si["payment_method"]
    if not chosen:
        raise invalid(
            "You cannot confirm this SetupIntent because it's missing a payment method.",
            code="setup_intent_unexpected_state",
        )
    pm = methods.resolve_payment_method(sb, chosen, "payment_method", now)
    if pm["type"] not in si["payment_method_types"]:
        raise invalid(
            f"The PaymentMethod provided ({pm['type']}) is not allowed for this SetupIntent.",
            param="payment_method",
            code="setup_intent_invalid_parameter",
        )
    if pm["customer"] and si["customer"] and pm["customer"] != si["customer"]:
        raise invalid(
            f"The provided PaymentMethod {pm['id']} belongs to a different customer.",
            param="payment_method",
        )
    si["payment_method"] = pm["id"]
    card = methods.card_of(sb, pm["id"])
    if card is not None and card.attach_decline:
        raise _fail(sb, si, pm, card.attach_decline)
    if card is not None and card.three_d_secure:
        si.update(
            {
                "status": "requires_action",
                "next_action": {
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {
                        "type": "three_d_secure_redirect",
                        "stripe_js": f"https://hooks.stripe.com/3d_secure_2/hosted?seti={si['id']}",
                        "source": new_id("src"),
                    },
                },
            }
        )
        sb.events.emit("setup_intent.requires_action", si)
        return si
    _succeed(sb, si, pm)
    return si


def authenticate(sb: Sandbox, si: Obj, *, succeeded: bool) -> Obj:
    """The customer completes (or fails) the 3D Secure challenge of a setup."""
    if si["status"] != "requires_action":
        raise invalid(f"SetupIntent {si['id']} is {si['status']}, not requires_action.")
    pm = sb.store.get("payment_method", si["payment_method"])
    if succeeded:
        sb.store.authenticated_pms.add(pm["id"])
        _succeed(sb, si, pm)
        return si
    si.update(
        {
            "status": "requires_payment_method",
            "next_action": None,
            "payment_method": None,
            "last_setup_error": {
                "type": "invalid_request_error",
                "code": "setup_intent_authentication_failure",
                "decline_code": None,
                "message": "The latest attempt to set up the payment method has failed "
                "because authentication failed.",
                "doc_url": "https://stripe.com/docs/error-codes/setup-intent-authentication-failure",
                "payment_method": snapshot(pm),
            },
        }
    )
    sb.events.emit("setup_intent.setup_failed", si)
    return si


def create(sb: Sandbox, call: Call) -> Obj:
    p = call.p(FIELDS)
    customer = (
        sb.store.get("customer", p.str("customer"), "customer") if p.str("customer") else None
    )
    now = sb.now(customer["test_clock"] if customer else None)
    si = _new(sb, p, customer, now)
    if p.str("payment_method"):
        pm = methods.resolve_payment_method(sb, p.req_str("payment_method"), "payment_method", now)
        si.update({"payment_method": pm["id"], "status": "requires_confirmation"})
    sb.events.emit("setup_intent.created", si)
    if p.bool("confirm"):
        confirm_with(sb, si, None, now)
    return si


def retrieve(sb: Sandbox, call: Call) -> Obj:
    call.p({"client_secret"})
    si = sb.store.get("setup_intent", call.match["id"])
    require_client_secret(call, si)
    return si


def update(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"metadata", "description", "payment_method", "customer", "payment_method_types"})
    si = sb.store.get("setup_intent", call.match["id"])
    if si["status"] in ("succeeded", "canceled"):
        raise invalid(
            f"You cannot update this SetupIntent because it has a status of {si['status']}.",
            code="setup_intent_unexpected_state",
        )
    if p.has("metadata"):
        si["metadata"] = merge_metadata(si["metadata"], p.raw("metadata"))
    if p.has("description"):
        si["description"] = p.str("description")
    if p.str("customer"):
        si["customer"] = sb.store.get("customer", p.str("customer"), "customer")["id"]
    if p.str("payment_method"):
        pm = methods.resolve_payment_method(
            sb, p.req_str("payment_method"), "payment_method", sb.time_of(si)
        )
        si.update({"payment_method": pm["id"], "status": "requires_confirmation"})
    return si


def confirm(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "payment_method",
            "client_secret",
            "return_url",
            "mandate_data",
            "use_stripe_sdk",
            "payment_method_options",
            "payment_method_data",
            "confirmation_token",
        }
    )
    si = sb.store.get("setup_intent", call.match["id"])
    require_client_secret(call, si)
    return confirm_with(sb, si, p.str("payment_method"), sb.time_of(si))


def cancel(sb: Sandbox, call: Call) -> Obj:
    p = call.p({"cancellation_reason"})
    si = sb.store.get("setup_intent", call.match["id"])
    if si["status"] in ("succeeded", "canceled", "processing"):
        raise invalid(
            f"You cannot cancel this SetupIntent because it has a status of {si['status']}.",
            code="setup_intent_unexpected_state",
        )
    si.update(
        {
            "status": "canceled",
            "cancellation_reason": p.str("cancellation_reason") or "requested_by_customer",
            "next_action": None,
        }
    )
    sb.events.emit("setup_intent.canceled", si)
    return si


def list_(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"customer", "payment_method", "attach_to_self", "customer_account"})
    objs = sb.store.all("setup_intent")
    for key in ("customer", "payment_method"):
        if p.str(key):
            objs = [o for o in objs if o[key] == p.str(key)]
    return paginate(objs, call, "/v1/setup_intents")


ROUTES: list[Route] = [
    ("POST", "/v1/setup_intents", create),
    ("GET", "/v1/setup_intents", list_),
    ("GET", "/v1/setup_intents/{id}", retrieve),
    ("POST", "/v1/setup_intents/{id}", update),
    ("POST", "/v1/setup_intents/{id}/confirm", confirm),
    ("POST", "/v1/setup_intents/{id}/cancel", cancel),
]
