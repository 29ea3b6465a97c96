"""Payment methods: Stripe's documented test tokens made real, saved to customers or not.

``pm_card_visa`` and friends (see :mod:`cards`) become a stored ``pm_...`` object
wherever a payment method is accepted; what the token was decides what the
payment method does when charged.  Saving a card to a customer checks it with
the issuer first, so a decline card fails there already.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .cards import BANK_ACCOUNTS, CARDS, TestBankAccount, TestCard, decline_details
from .errors import StripeError, invalid
from .fixtures import template
from .ids import new_id
from .sandbox import Sandbox
from .store import Obj

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


def _card_details(card: TestCard, fingerprint: str) -> dict[str, Any]:
    return {
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
    }


def _bank_details(bank: TestBankAccount, fingerprint: str) -> dict[str, Any]:
    return {
        "account_holder_type": "individual",
        "account_type": "checking",
        "bank_name": "STRIPE TEST BANK",
        "financial_connections_account": None,
        "fingerprint": fingerprint,
        "last4": bank.last4,
        "networks": {"preferred": "ach", "supported": ["ach"]},
        "routing_number": "110000000",
        "status_details": {},
    }


def payment_method_from_token(sb: Sandbox, test_token: str, created: int) -> Obj:
    """``pm_card_visa`` etc. become a real ``pm_...`` object, as on Stripe."""
    pm = template("payment_method")
    fingerprint = hashlib.sha256(test_token.encode()).hexdigest()[:16]
    pm.update(
        {
            "id": new_id("pm"),
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": billing_details(),
            "created": created,
            "customer": None,
            "customer_account": None,
            "livemode": False,
            "metadata": {},
        }
    )
    if test_token in BANK_ACCOUNTS:
        # A payment method carries the hash of its own type only.
        pm.pop("card", None)
        pm["type"] = "us_bank_account"
        pm["us_bank_account"] = _bank_details(BANK_ACCOUNTS[test_token], fingerprint)
        pm["billing_details"]["name"] = "Jenny Rosen"
    else:
        pm["type"] = "card"
        pm["card"] = _card_details(CARDS[test_token], fingerprint)
    sb.store.add("payment_method", pm)
    sb.store.pm_card[pm["id"]] = test_token
    return pm


def is_test_token(value: str) -> bool:
    return value in CARDS or value in BANK_ACCOUNTS


def resolve_payment_method(sb: Sandbox, value: str, param: str, created: int) -> Obj:
    """Accept a stored ``pm_...`` id or a test token (``pm_card_visa``, ``tok_visa``)."""
    if is_test_token(value):
        return payment_method_from_token(sb, value, created)
    return sb.store.get("payment_method", value, param)


def card_of(sb: Sandbox, pm_id: str | None) -> TestCard | None:
    return CARDS.get(sb.store.pm_card.get(pm_id or "", ""))


def bank_of(sb: Sandbox, pm_id: str | None) -> TestBankAccount | None:
    return BANK_ACCOUNTS.get(sb.store.pm_card.get(pm_id or "", ""))


def card_error(
    decline_code: str, extra: dict[str, Any] | None = None, param: str | None = None
) -> StripeError:
    code, message = decline_details(decline_code)
    return StripeError(
        402, "card_error", message, code=code, decline_code=decline_code, param=param, extra=extra
    )


def verify_for_saving(sb: Sandbox, pm: Obj) -> None:
    """Stripe checks a card with its issuer before saving it to a customer."""
    card = card_of(sb, pm["id"])
    if card is not None and card.attach_decline:
        raise card_error(card.attach_decline, param="")


def attach(sb: Sandbox, pm: Obj, customer: Obj, *, verified: bool = False) -> Obj:
    if pm["customer"] == customer["id"]:
        return pm
    if pm["customer"] is not None:
        raise invalid(
            "The payment method you provided has already been attached to a customer.",
            param="payment_method",
            code="payment_method_unexpected_state",
        )
    if not verified:
        verify_for_saving(sb, pm)
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
        customer["invoice_settings"]["default_payment_method"] = None
        sb.events.emit(
            "customer.updated",
            customer,
            {"invoice_settings": {"default_payment_method": pm["id"]}},
        )
    sb.events.emit("payment_method.detached", pm)
    return pm


def next_decline(sb: Sandbox, pm_id: str, *, consume: bool = True) -> str | None:
    """Decline code for the next charge on ``pm_id``, or None if it will succeed."""
    queued = sb.store.fail_next.get(pm_id)
    if queued:
        return queued.pop(0) if consume else queued[0]
    card = card_of(sb, pm_id)
    return card.charge_decline if card else None
