"""Stripe's documented test payment methods (docs.stripe.com/testing) and how each behaves.

Cards: ``pm_card_chargeCustomerFail`` attaches but every charge fails; the other
decline cards fail already when saved to a customer (Stripe verifies a card on
attach or setup), and on any charge.  3D Secure cards ask the customer to
authenticate when they are present and decline off-session payments with
``authentication_required`` (``authenticationRequiredOnSetup`` only until it has
been set up once).  ``pendingRefund`` makes refunds start ``pending`` and succeed
later; ``refundFail`` makes them look ``succeeded`` and fail later; the dispute
cards succeed and are then disputed.

US bank accounts (docs.stripe.com/payments/ach-direct-debit): debits stay
``processing`` until they settle, then succeed or fail with the account's
failure code; ``pm_usBankAccount_processing`` never settles on its own.

The sandbox control ``fail_next`` queues declines on any payment method.
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
    three_d_secure: str | None = None  # "always" or "on_setup"
    refund: str | None = None  # "pending" or "fail"
    dispute: str | None = None  # the dispute reason; "inquiry" for an inquiry


@dataclass(frozen=True)
class TestBankAccount:
    last4: str
    failure: str | None = None  # the charge's failure_code when the debit fails
    settles: bool = True
    dispute: bool = False


def _decline(last4: str, code: str) -> TestCard:
    return TestCard("visa", last4, attach_decline=code, charge_decline=code)


_DECLINES = {
    "generic_decline": _decline("0002", "generic_decline"),
    "insufficient_funds": _decline("9995", "insufficient_funds"),
    "stolen_card": _decline("9979", "stolen_card"),
    "lost_card": _decline("9987", "lost_card"),
    "expired_card": _decline("0069", "expired_card"),
    "incorrect_cvc": _decline("0127", "incorrect_cvc"),
    "processing_error": _decline("0119", "processing_error"),
    "card_velocity_exceeded": _decline("6975", "card_velocity_exceeded"),
    "fraudulent": TestCard(
        "visa", "0019", attach_decline="fraudulent", charge_decline="fraudulent"
    ),
}

CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "pm_card_mastercard_prepaid": TestCard("mastercard", "5100", funding="prepaid"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_diners": TestCard("diners", "0004"),
    "pm_card_jcb": TestCard("jcb", "0505"),
    "pm_card_unionpay": TestCard("unionpay", "0005"),
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
    "pm_card_visa_chargeDeclinedVelocityLimitExceeded": _DECLINES["card_velocity_exceeded"],
    "pm_card_chargeDeclinedFraudulent": _DECLINES["fraudulent"],
    "pm_card_radarBlock": _DECLINES["fraudulent"],
    "pm_card_authenticationRequired": TestCard("visa", "3184", three_d_secure="always"),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", three_d_secure="always"),
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", three_d_secure="on_setup"),
    "pm_card_pendingRefund": TestCard("visa", "7726", refund="pending"),
    "pm_card_refundFail": TestCard("visa", "5126", refund="fail"),
    "pm_card_createDispute": TestCard("visa", "0259", dispute="fraudulent"),
    "pm_card_createDisputeProductNotReceived": TestCard(
        "visa", "2685", dispute="product_not_received"
    ),
    "pm_card_createDisputeInquiry": TestCard("visa", "1976", dispute="inquiry"),
}
# Card tokens (``tok_visa``) behave like the matching ``pm_card_`` token.
for _name, _card in list(CARDS.items()):
    CARDS["tok_" + _name.removeprefix("pm_card_")] = _card

BANK_ACCOUNTS: dict[str, TestBankAccount] = {
    "pm_usBankAccount_success": TestBankAccount("6789"),
    "pm_usBankAccount_accountClosed": TestBankAccount("1113", failure="account_closed"),
    "pm_usBankAccount_noAccount": TestBankAccount("1116", failure="no_account"),
    "pm_usBankAccount_insufficientFunds": TestBankAccount("2227", failure="insufficient_funds"),
    "pm_usBankAccount_debitNotAuthorized": TestBankAccount("4440", failure="debit_not_authorized"),
    "pm_usBankAccount_dispute": TestBankAccount("5559", dispute=True),
    "pm_usBankAccount_processing": TestBankAccount("0009", settles=False),
}

# Test account numbers (routing number 110000000) -> the token that behaves like them.
BANK_ACCOUNT_NUMBERS: dict[str, str] = {
    "000123456789": "pm_usBankAccount_success",
    "000111111113": "pm_usBankAccount_accountClosed",
    "000111111116": "pm_usBankAccount_noAccount",
    "000222222227": "pm_usBankAccount_insufficientFunds",
    "000333333335": "pm_usBankAccount_debitNotAuthorized",
    "000555555559": "pm_usBankAccount_dispute",
    "000000000009": "pm_usBankAccount_processing",
}

# decline_code -> (error code, customer-facing message)
DECLINE_MESSAGES: dict[str, tuple[str, str]] = {
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "stolen_card": ("card_declined", "Your card was declined."),
    "lost_card": ("card_declined", "Your card was declined."),
    "fraudulent": ("card_declined", "Your card was declined."),
    "card_velocity_exceeded": (
        "card_declined",
        "Your card was declined for making repeated attempts too frequently or exceeding "
        "its amount limit.",
    ),
    "authentication_required": (
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}

# Stripe never retries these automatically: the issuer said a retry cannot succeed
# (docs.stripe.com/billing/revenue-recovery/smart-retries, non-retryable codes).
HARD_DECLINES = frozenset(
    {
        "authentication_required",
        "incorrect_number",
        "lost_card",
        "pickup_card",
        "stolen_card",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "transaction_not_allowed",
        "do_not_try_again",
        "highest_risk_level",
    }
)

# A bank debit's failure_code -> its message on the charge and the payment error.
BANK_FAILURES: dict[str, str] = {
    "account_closed": "The customer's bank account has been closed.",
    "no_account": "The customer's bank account could not be located.",
    "insufficient_funds": "The customer's account has insufficient funds to cover this payment.",
    "debit_not_authorized": "The customer has notified their bank that this payment was "
    "unauthorized.",
}


def decline_details(decline_code: str) -> tuple[str, str]:
    return DECLINE_MESSAGES.get(decline_code, ("card_declined", "Your card was declined."))
