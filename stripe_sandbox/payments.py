"""Payment methods, payment intents, charges and refunds: where money moves.

All charge attempts go through :func:`attempt_charge`, which decides success or
decline from the test card (or a queued sandbox failure), records a charge like
Stripe does for both outcomes, and emits the matching events.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .cards import CARDS, decline_details
from .errors import StripeError, invalid
from .fixtures import template
from .ids import new_id, token
from .sandbox import Sandbox
from .store import Obj, snapshot

EMPTY_ADDRESS = {
    "city": None,
    "country": None,
    "line1": None,
    "line2": None,
    "postal_code": None,
    "state": None,
}


def billing_details(email: str | None = None, name: str | None = None) -> dict[str, Any]:
    return {
        "address": dict(EMPTY_ADDRESS),
        "email": email,
        "name": name,
        "phone": None,
        "tax_id": None,
    }


# -- payment methods -------------------------------------------------------


def payment_method_from_token(sb: Sandbox, card_token: str, created: int) -> Obj:
    """``pm_card_visa`` etc. become a real ``pm_...`` object, as on Stripe."""
    card = CARDS[card_token]
    pm = template("payment_method")
    fingerprint = hashlib.sha256(card_token.encode()).hexdigest()[:16]
    pm.update(
        {
            "id": new_id("pm"),
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": billing_details(),
            "card": {
                "brand": card.brand,
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                    "cvc_check": "pass",
                },
                "country": "US",
                "display_brand": card.brand,
                "exp_month": 12,
                "exp_year": 2034,
                "fingerprint": fingerprint,
                "funding": card.funding,
                "generated_from": None,
                "last4": card.last4,
                "networks": {"available": [card.brand], "preferred": None},
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
                "regulated_status": "unregulated",
            },
            "created": created,
            "customer": None,
            "customer_account": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
    )
    sb.store.add("payment_method", pm)
    sb.store.pm_card[pm["id"]] = card_token
    return pm


def resolve_payment_method(sb: Sandbox, value: str, param: str, created: int) -> Obj:
    """Accept a stored ``pm_...`` id or a test token (``pm_card_visa``, ``tok_visa``)."""
    if value in CARDS:
        return payment_method_from_token(sb, value, created)
    return sb.store.get("payment_method", value, param)


def card_error(
    decline_code: str, extra: dict[str, Any] | None = None, param: str | None = None
) -> StripeError:
    code, message = decline_details(decline_code)
    return StripeError(
        402, "card_error", message, code=code, decline_code=decline_code, param=param, extra=extra
    )


def attach(sb: Sandbox, pm: Obj, customer: Obj) -> Obj:
    if pm["customer"] == customer["id"]:
        return pm
    if pm["customer"] is not None:
        raise invalid(
            "The payment method you provided has already been attached to a customer.",
            param="payment_method",
            code="payment_method_unexpected_state",
        )
    card = CARDS.get(sb.store.pm_card.get(pm["id"], ""))
    if card is not None and card.attach_decline:
        # Stripe validates the card on attach; only chargeCustomerFail-style cards pass.
        raise card_error(card.attach_decline, param="")
    pm["customer"] = customer["id"]
    sb.events.emit("payment_method.attached", pm)
    return pm


def detach(sb: Sandbox, pm: Obj) -> Obj:
    if pm["customer"] is None:
        raise invalid(
            "The payment method you provided is not attached to a customer so "
            "detachment is impossible.",
            code="payment_method_unexpected_state",
        )
    customer = sb.store.maybe("customer", pm["customer"])
    pm["customer"] = None
    if customer and customer["invoice_settings"]["default_payment_method"] == pm["id"]:
        before = snapshot(customer)
        customer["invoice_settings"]["default_payment_method"] = None
        sb.events.emit(
            "customer.updated", customer, {"invoice_settings": before["invoice_settings"]}
        )
    sb.events.emit("payment_method.detached", pm)
    return pm


def next_decline(sb: Sandbox, pm_id: str, *, consume: bool = True) -> str | None:
    """Decline code for the next charge on ``pm_id``, or None if it will succeed."""
    queued = sb.store.fail_next.get(pm_id)
    if queued:
        return queued.pop(0) if consume else queued[0]
    card = CARDS.get(sb.store.pm_card.get(pm_id, ""))
    return card.charge_decline if card else None


# -- payment intents and charges ----------------------------------------------


def new_payment_intent(
    sb: Sandbox,
    *,
    amount: int,
    currency: str,
    customer: str | None,
    created: int,
    payment_method: str | None = None,
    metadata: dict[str, str] | None = None,
    description: str | None = None,
    setup_future_usage: str | None = None,
    receipt_email: str | None = None,
) -> Obj:
    pi = template("payment_intent")
    pi_id = new_id("pi")
    pi.update(
        {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{pi_id}_secret_{token(25)}",
            "confirmation_method": "automatic",
            "created": created,
            "currency": currency,
            "customer": customer,
            "customer_account": None,
            "description": description,
            "excluded_payment_method_types": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "managed_payments": None,
            "metadata": metadata or {},
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": payment_method,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": receipt_email,
            "review": None,
            "setup_future_usage": setup_future_usage,
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
    )
    sb.store.add("payment_intent", pi)
    sb.events.emit("payment_intent.created", pi)
    return pi


def _charge(sb: Sandbox, pi: Obj, pm: Obj, decline: str | None, created: int) -> Obj:
    charge = template("charge")
    ok = decline is None
    code, message = decline_details(decline) if decline else (None, None)
    card = pm.get("card") or {}
    charge_id = new_id("ch")
    charge.update(
        {
            "id": charge_id,
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"] if ok else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": new_id("txn") if ok else None,
            "billing_details": snapshot(pm["billing_details"]),
            "calculated_statement_descriptor": "SANDBOX COWORK",
            "captured": ok,
            "created": created,
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": code,
            "failure_message": message,
            "fraud_details": {},
            "livemode": False,
            "metadata": dict(pi["metadata"]),
            "on_behalf_of": None,
            "outcome": {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network" if ok else "declined_by_network",
                "reason": decline,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "Payment complete."
                if ok
                else "The bank did not return any further details with this decline.",
                "type": "authorized" if ok else "issuer_declined",
            },
            "paid": ok,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": {
                "card": {
                    "amount_authorized": pi["amount"] if ok else None,
                    "brand": card.get("brand"),
                    "checks": card.get("checks"),
                    "country": card.get("country"),
                    "exp_month": card.get("exp_month"),
                    "exp_year": card.get("exp_year"),
                    "fingerprint": card.get("fingerprint"),
                    "funding": card.get("funding"),
                    "last4": card.get("last4"),
                    "network": card.get("brand"),
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": pi["receipt_email"],
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{token(40)}" if ok else None,
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "failed",
            "transfer_data": None,
            "transfer_group": None,
        }
    )
    sb.store.add("charge", charge)
    return charge


def attempt_charge(sb: Sandbox, pi: Obj, pm: Obj, created: int) -> StripeError | None:
    """Charge ``pm`` for ``pi``; returns the card error on decline (already recorded)."""
    decline = next_decline(sb, pm["id"])
    charge = _charge(sb, pi, pm, decline, created)
    pi["payment_method"] = pm["id"]
    pi["latest_charge"] = charge["id"]
    if decline is None:
        pi.update(
            {"status": "succeeded", "amount_received": pi["amount"], "last_payment_error": None}
        )
        sb.events.emit("charge.succeeded", charge)
        sb.events.emit("payment_intent.succeeded", pi)
        return None
    code, message = decline_details(decline)
    pi["status"] = "requires_payment_method"
    pi["last_payment_error"] = {
        "type": "card_error",
        "code": code,
        "decline_code": decline,
        "message": message,
        "charge": charge["id"],
        "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"),
        "payment_method": snapshot(pm),
    }
    sb.events.emit("charge.failed", charge)
    sb.events.emit("payment_intent.payment_failed", pi)
    return card_error(
        decline,
        extra={
            "charge": charge["id"],
            "payment_intent": snapshot(pi),
            "payment_method": snapshot(pm),
        },
    )


def confirm(sb: Sandbox, pi: Obj, pm_id: str | None, created: int) -> StripeError | None:
    if pi["status"] in ("succeeded", "canceled"):
        raise invalid(
            f"This PaymentIntent's payment_method could not be updated because it has a "
            f"status of {pi['status']}. You may only update the payment_method of a "
            "PaymentIntent with one of the following statuses: requires_payment_method, "
            "requires_confirmation, requires_action.",
            code="payment_intent_unexpected_state",
        )
    chosen = pm_id or pi["payment_method"]
    if not chosen:
        raise invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "To confirm the PaymentIntent with cus, specify a payment method attached to "
            "this customer along with the customer ID.",
            code="payment_intent_unexpected_state",
        )
    pm = resolve_payment_method(sb, chosen, "payment_method", created)
    if pm["customer"] and pi["customer"] and pm["customer"] != pi["customer"]:
        raise invalid(
            f"The provided PaymentMethod {pm['id']} belongs to a different customer.",
            param="payment_method",
        )
    return attempt_charge(sb, pi, pm, created)


# -- refunds ----------------------------------------------------------------


def refund(
    sb: Sandbox,
    charge: Obj,
    *,
    amount: int | None,
    reason: str | None,
    metadata: dict[str, str],
    created: int,
) -> Obj:
    if charge["status"] != "succeeded":
        raise invalid(
            f"Charge {charge['id']} has not succeeded and cannot be refunded.", param="charge"
        )
    remaining = charge["amount_captured"] - charge["amount_refunded"]
    if remaining <= 0:
        raise invalid(
            f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
        )
    amount = remaining if amount is None else amount
    if amount <= 0:
        raise invalid("Refund amount must be positive.", param="amount")
    if amount > remaining:
        raise invalid(
            f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
            f"charge (${remaining / 100:.2f})",
            param="amount",
            code="amount_too_large",
        )
    item = template("refund")
    item.update(
        {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn"),
            "charge": charge["id"],
            "created": created,
            "currency": charge["currency"],
            "customer": charge["customer"],
            "customer_account": None,
            "destination_details": {
                "card": {
                    "reference": None,
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "payment_method": charge["payment_method"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
    )
    sb.store.add("refund", item)
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    charge["refunds"]["data"].insert(0, snapshot(item))
    sb.events.emit("refund.created", item)
    sb.events.emit("charge.refunded", charge)
    return item
