"""Payment intents and charges: where money moves.

Every attempt to take money goes through :func:`collect`, which decides from the
test payment method (or a queued sandbox failure) what Stripe would do:

* a card that needs 3D Secure asks a present customer to authenticate
  (``requires_action``) and declines an off-session payment with
  ``authentication_required``;
* a bank debit goes ``processing`` and settles later (:func:`settle`);
* otherwise the card is charged or declined, and Stripe records a charge
  either way.

Payment methods live in :mod:`methods`, refunds in :mod:`refunding`, disputes in
:mod:`disputing`.
"""

from __future__ import annotations

from typing import Any

from . import disputing
from .cards import BANK_FAILURES, decline_details
from .errors import StripeError, invalid
from .fixtures import template
from .ids import new_id, token
from .methods import bank_of, card_error, card_of, next_decline, resolve_payment_method
from .sandbox import Sandbox
from .store import Obj, snapshot

# How long a bank debit stays processing before it settles, in its object's time
# (a test clock advance settles it; on wall time /_sandbox/.../settle does it now).
BANK_SETTLEMENT_SECONDS = 3600

FINAL_PI_STATUSES = ("succeeded", "canceled")


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
    payment_method_types: list[str] | None = None,
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
            "payment_method_types": payment_method_types or ["card"],
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


def _card_payment_details(pm: Obj, amount: int | None, authenticated: bool) -> dict[str, Any]:
    card = pm.get("card") or {}
    return {
        "card": {
            "amount_authorized": amount,
            "authorization_code": "123456" if amount else None,
            "brand": card.get("brand"),
            "checks": card.get("checks"),
            "country": card.get("country"),
            "exp_month": card.get("exp_month"),
            "exp_year": card.get("exp_year"),
            "extended_authorization": {"status": "disabled"},
            "fingerprint": card.get("fingerprint"),
            "funding": card.get("funding"),
            "incremental_authorization": {"status": "unavailable"},
            "installments": None,
            "last4": card.get("last4"),
            "mandate": None,
            "multicapture": {"status": "unavailable"},
            "network": card.get("brand"),
            "network_token": {"used": False},
            "network_transaction_id": token(15) if amount else None,
            "overcapture": {"maximum_amount_capturable": amount or 0, "status": "unavailable"},
            "regulated_status": card.get("regulated_status"),
            "three_d_secure": {
                "authentication_flow": "challenge",
                "electronic_commerce_indicator": "05",
                "exemption_indicator": None,
                "result": "authenticated",
                "result_reason": None,
                "transaction_id": token(36),
                "version": "2.2.0",
            }
            if authenticated
            else None,
            "transaction_link_id": None,
            "wallet": None,
        },
        "type": "card",
    }


def _bank_payment_details(pm: Obj) -> dict[str, Any]:
    bank = pm["us_bank_account"]
    return {
        "type": "us_bank_account",
        "us_bank_account": {
            "account_holder_type": bank["account_holder_type"],
            "account_type": bank["account_type"],
            "bank_name": bank["bank_name"],
            "expected_debit_date": None,
            "fingerprint": bank["fingerprint"],
            "last4": bank["last4"],
            "mandate": None,
            "payment_reference": None,
            "routing_number": bank["routing_number"],
        },
    }


def _charge(
    sb: Sandbox,
    pi: Obj,
    pm: Obj,
    created: int,
    *,
    status: str,
    decline: str | None = None,
    authenticated: bool = False,
) -> Obj:
    """A charge as Stripe records every attempt: ``succeeded``, ``pending`` or ``failed``."""
    charge = template("charge")
    ok = status == "succeeded"
    code, message = decline_details(decline) if decline else (None, None)
    charge_id = new_id("ch")
    bank = pm["type"] == "us_bank_account"
    charge.update(
        {
            "id": charge_id,
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"] if status != "failed" else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": new_id("txn") if status != "failed" else None,
            "billing_details": snapshot(pm["billing_details"]),
            "calculated_statement_descriptor": "SANDBOX COWORK",
            "captured": status != "failed",
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
                "network_status": "declined_by_network" if decline else "approved_by_network",
                "reason": decline,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "The bank did not return any further details with this decline."
                if decline
                else "Payment complete.",
                "type": "issuer_declined" if decline else "authorized",
            },
            "paid": ok,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": _bank_payment_details(pm)
            if bank
            else _card_payment_details(pm, pi["amount"] if ok else None, authenticated),
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
            "status": status,
            "transfer_data": None,
            "transfer_group": None,
        }
    )
    sb.store.add("charge", charge)
    pi["latest_charge"] = charge_id
    return charge


def _succeed(sb: Sandbox, pi: Obj, charge: Obj, now: int) -> None:
    pi.update(
        {
            "status": "succeeded",
            "amount_received": pi["amount"],
            "last_payment_error": None,
            "next_action": None,
            "processing": None,
        }
    )
    sb.events.emit("charge.succeeded", charge)
    sb.events.emit("payment_intent.succeeded", pi)
    # Dispute test cards: the charge succeeds, then the cardholder disputes it.
    card = card_of(sb, charge["payment_method"])
    bank = bank_of(sb, charge["payment_method"])
    if card is not None and card.dispute:
        inquiry = card.dispute == "inquiry"
        disputing.open_dispute(
            sb, charge, now, reason="general" if inquiry else card.dispute, inquiry=inquiry
        )
    elif bank is not None and bank.dispute:
        disputing.open_dispute(sb, charge, now, reason="unrecognized")


def _payment_error(pi: Obj, pm: Obj, charge: Obj | None, code: str, decline: str | None) -> Obj:
    message = decline_details(decline)[1] if decline else BANK_FAILURES.get(code, "Payment failed.")
    return {
        "type": "card_error",
        "code": code,
        "decline_code": decline,
        "message": message,
        "charge": charge["id"] if charge else None,
        "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"),
        "payment_method": snapshot(pm),
    }


def _fail(sb: Sandbox, pi: Obj, pm: Obj, charge: Obj | None, decline: str) -> StripeError:
    code, _ = decline_details(decline)
    pi.update(
        {
            "status": "requires_payment_method",
            "next_action": None,
            "processing": None,
            "last_payment_error": _payment_error(pi, pm, charge, code, decline),
        }
    )
    if charge is not None:
        sb.events.emit("charge.failed", charge)
    sb.events.emit("payment_intent.payment_failed", pi)
    return card_error(
        decline,
        extra={
            "charge": charge["id"] if charge else None,
            "payment_intent": snapshot(pi),
            "payment_method": snapshot(pm),
        },
    )


def _requires_action(sb: Sandbox, pi: Obj, pm: Obj) -> None:
    pi.update(
        {
            "status": "requires_action",
            "payment_method": pm["id"],
            "next_action": {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "type": "three_d_secure_redirect",
                    "stripe_js": f"https://hooks.stripe.com/3d_secure_2/hosted?pi={pi['id']}",
                    "source": new_id("src"),
                },
            },
        }
    )
    sb.events.emit("payment_intent.requires_action", pi)


def _needs_authentication(sb: Sandbox, pm: Obj, *, off_session: bool) -> bool:
    card = card_of(sb, pm["id"])
    if card is None or card.three_d_secure is None:
        return False
    # Set up once with authentication, an "on_setup" card pays off-session unchallenged.
    return not (
        card.three_d_secure == "on_setup" and off_session and pm["id"] in sb.store.authenticated_pms
    )


def collect(
    sb: Sandbox,
    pi: Obj,
    pm: Obj,
    now: int,
    *,
    off_session: bool,
    authenticated: bool = False,
) -> StripeError | None:
    """One attempt to take ``pi``'s amount from ``pm``; the card error when it is declined.

    Afterwards ``pi["status"]`` says what happened: ``succeeded``,
    ``requires_action`` (customer must authenticate), ``processing`` (a bank
    debit on its way) or ``requires_payment_method`` (declined).
    """
    pi["payment_method"] = pm["id"]
    if pm["type"] == "us_bank_account":
        if "us_bank_account" not in pi["payment_method_types"]:
            raise invalid(
                f"The PaymentMethod provided ({pm['type']}) is not allowed for this "
                "PaymentIntent. Please attach a PaymentMethod of one of the following types: "
                f"{', '.join(pi['payment_method_types'])}.",
                param="payment_method",
                code="payment_intent_invalid_parameter",
            )
        _start_debit(sb, pi, pm, now)
        return None
    if "card" not in pi["payment_method_types"]:
        raise invalid(
            "The PaymentMethod provided (card) is not allowed for this PaymentIntent.",
            param="payment_method",
            code="payment_intent_invalid_parameter",
        )
    if not authenticated and _needs_authentication(sb, pm, off_session=off_session):
        if off_session:
            # Nobody is there to authenticate: the issuer declines.
            charge = _charge(sb, pi, pm, now, status="failed", decline="authentication_required")
            return _fail(sb, pi, pm, charge, "authentication_required")
        _requires_action(sb, pi, pm)
        return None
    decline = next_decline(sb, pm["id"])
    if decline is not None:
        charge = _charge(sb, pi, pm, now, status="failed", decline=decline)
        return _fail(sb, pi, pm, charge, decline)
    charge = _charge(sb, pi, pm, now, status="succeeded", authenticated=authenticated)
    _succeed(sb, pi, charge, now)
    return None


def _start_debit(sb: Sandbox, pi: Obj, pm: Obj, now: int) -> None:
    charge = _charge(sb, pi, pm, now, status="pending")
    pi.update(
        {
            "status": "processing",
            "next_action": None,
            "last_payment_error": None,
            "processing": {"type": "us_bank_account"},
        }
    )
    bank = bank_of(sb, pm["id"])
    if bank is None or bank.settles:
        sb.store.settlements[pi["id"]] = (now + BANK_SETTLEMENT_SECONDS, "auto")
    sb.events.emit("charge.pending", charge)
    sb.events.emit("payment_intent.processing", pi)


def settle(
    sb: Sandbox, pi: Obj, now: int, outcome: str = "auto", failure: str | None = None
) -> None:
    """A processing bank debit settles: ``succeeded``, ``failed`` or as its account says."""
    if pi["status"] != "processing":
        raise invalid(f"PaymentIntent {pi['id']} is {pi['status']}, not processing.")
    sb.store.settlements.pop(pi["id"], None)
    charge = sb.store.get("charge", pi["latest_charge"])
    pm = sb.store.get("payment_method", pi["payment_method"])
    bank = bank_of(sb, pm["id"])
    if outcome == "auto":
        failure = bank.failure if bank else None
    elif outcome == "failed":
        failure = failure or "insufficient_funds"
    else:
        failure = None
    if failure is None:
        charge.update({"status": "succeeded", "paid": True})
        _succeed(sb, pi, charge, now)
        return
    message = BANK_FAILURES.get(failure, "The payment failed.")
    charge.update(
        {
            "status": "failed",
            "paid": False,
            "amount_captured": 0,
            "failure_code": failure,
            "failure_message": message,
            "failure_balance_transaction": new_id("txn"),
        }
    )
    pi.update(
        {
            "status": "requires_payment_method",
            "processing": None,
            "last_payment_error": _payment_error(pi, pm, charge, failure, None),
        }
    )
    sb.events.emit("charge.failed", charge)
    sb.events.emit("payment_intent.payment_failed", pi)


def authenticate(sb: Sandbox, pi: Obj, now: int, *, succeeded: bool) -> StripeError | None:
    """The customer completes (or fails) the 3D Secure challenge of a ``requires_action`` PI."""
    if pi["status"] != "requires_action":
        raise invalid(f"PaymentIntent {pi['id']} is {pi['status']}, not requires_action.")
    pm = sb.store.get("payment_method", pi["payment_method"])
    if succeeded:
        return collect(sb, pi, pm, now, off_session=False, authenticated=True)
    pi.update(
        {
            "status": "requires_payment_method",
            "next_action": None,
            "last_payment_error": {
                "type": "invalid_request_error",
                "code": "payment_intent_authentication_failure",
                "decline_code": None,
                "message": "The provided PaymentMethod has failed authentication. You can "
                "provide payment_method_data or a new PaymentMethod to attempt to fulfill "
                "this PaymentIntent again.",
                "charge": None,
                "doc_url": "https://stripe.com/docs/error-codes/"
                "payment-intent-authentication-failure",
                "payment_method": snapshot(pm),
            },
        }
    )
    sb.events.emit("payment_intent.payment_failed", pi)
    return None


def confirm(
    sb: Sandbox, pi: Obj, pm_id: str | None, now: int, *, off_session: bool = False
) -> StripeError | None:
    if pi["status"] in FINAL_PI_STATUSES or pi["status"] == "processing":
        raise invalid(
            f"You cannot confirm this PaymentIntent because it has a status of {pi['status']}.",
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
    pm = resolve_payment_method(sb, chosen, "payment_method", now)
    if pm["customer"] and pi["customer"] and pm["customer"] != pi["customer"]:
        raise invalid(
            f"The provided PaymentMethod {pm['id']} belongs to a different customer.",
            param="payment_method",
        )
    return collect(sb, pi, pm, now, off_session=off_session)


def cancel(sb: Sandbox, pi: Obj, now: int, reason: str) -> Obj:
    # A bank debit can still be canceled while processing (Stripe's ACH docs use
    # pm_usBankAccount_processing to test exactly that); a card payment cannot.
    bank_debit = pi["status"] == "processing" and bank_of(sb, pi["payment_method"]) is not None
    if pi["status"] in FINAL_PI_STATUSES or (pi["status"] == "processing" and not bank_debit):
        raise invalid(
            f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}.",
            code="payment_intent_unexpected_state",
        )
    if bank_debit:
        sb.store.settlements.pop(pi["id"], None)
        charge = sb.store.get("charge", pi["latest_charge"])
        charge.update({"status": "failed", "captured": False, "amount_captured": 0})
        sb.events.emit("charge.failed", charge)
    pi.update(
        {
            "status": "canceled",
            "canceled_at": now,
            "cancellation_reason": reason,
            "next_action": None,
            "processing": None,
        }
    )
    sb.events.emit("payment_intent.canceled", pi)
    return pi
