"""Stripe's documented test payment methods and how each behaves.

``pm_card_chargeCustomerFail`` attaches but every charge fails; the other decline
cards fail already when attached (Stripe verifies a card on attach), and on any
charge.  Sandbox control ``fail_next`` queues failures on any payment method.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    funding: str = "credit"
    attach_decline: str | None = None
    charge_decline: str | None = None


_VISA = TestCard("visa", "4242")
_DECLINES = {
    "generic_decline": TestCard(
        "visa", "0002", attach_decline="generic_decline", charge_decline="generic_decline"
    ),
    "insufficient_funds": TestCard(
        "visa", "9995", attach_decline="insufficient_funds", charge_decline="insufficient_funds"
    ),
    "stolen_card": TestCard(
        "visa", "9979", attach_decline="stolen_card", charge_decline="stolen_card"
    ),
    "lost_card": TestCard("visa", "9987", attach_decline="lost_card", charge_decline="lost_card"),
    "expired_card": TestCard(
        "visa", "0069", attach_decline="expired_card", charge_decline="expired_card"
    ),
    "incorrect_cvc": TestCard(
        "visa", "0127", attach_decline="incorrect_cvc", charge_decline="incorrect_cvc"
    ),
    "processing_error": TestCard(
        "visa", "0119", attach_decline="processing_error", charge_decline="processing_error"
    ),
    "fraudulent": TestCard(
        "visa", "0019", attach_decline="fraudulent", charge_decline="fraudulent"
    ),
}

CARDS: dict[str, TestCard] = {
    "pm_card_visa": _VISA,
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", charge_decline="generic_decline"),
    "pm_card_visa_chargeDeclined": _DECLINES["generic_decline"],
    "pm_card_chargeDeclined": _DECLINES["generic_decline"],
    "pm_card_visa_chargeDeclinedInsufficientFunds": _DECLINES["insufficient_funds"],
    "pm_card_chargeDeclinedInsufficientFunds": _DECLINES["insufficient_funds"],
    "pm_card_visa_chargeDeclinedStolenCard": _DECLINES["stolen_card"],
    "pm_card_chargeDeclinedStolenCard": _DECLINES["stolen_card"],
    "pm_card_visa_chargeDeclinedLostCard": _DECLINES["lost_card"],
    "pm_card_chargeDeclinedLostCard": _DECLINES["lost_card"],
    "pm_card_chargeDeclinedExpiredCard": _DECLINES["expired_card"],
    "pm_card_chargeDeclinedIncorrectCvc": _DECLINES["incorrect_cvc"],
    "pm_card_chargeDeclinedProcessingError": _DECLINES["processing_error"],
    "pm_card_chargeDeclinedFraudulent": _DECLINES["fraudulent"],
}
# Card tokens (``tok_visa``) behave like the matching ``pm_card_`` token.
for _name, _card in list(CARDS.items()):
    CARDS["tok_" + _name.removeprefix("pm_card_")] = _card

# decline_code -> (error code, customer-facing message)
DECLINE_MESSAGES: dict[str, tuple[str, str]] = {
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "stolen_card": ("card_declined", "Your card was declined."),
    "lost_card": ("card_declined", "Your card was declined."),
    "fraudulent": ("card_declined", "Your card was declined."),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


def decline_details(decline_code: str) -> tuple[str, str]:
    return DECLINE_MESSAGES.get(decline_code, ("card_declined", "Your card was declined."))
