"""The fields of Stripe's invoices, subscriptions and customers dunning reads.

Current API versions moved an invoice's subscription to
``parent.subscription_details.subscription``; both it and the older top-level
``subscription`` are read. Expanded there (``expand[]``), the subscription
also gives its status, so dunning need not read it on its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import StripeEvent

# Stripe's hard declines: the card will not work however often it is tried
# again, so automatic attempts wait for a new payment method.
HARD_DECLINES = frozenset(
    {
        "fraudulent",
        "incorrect_number",
        "invalid_account",
        "lost_card",
        "merchant_blacklist",
        "pickup_card",
        "restricted_card",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "security_violation",
        "stolen_card",
        "stop_payment_order",
        # No card at all is the same situation: only a new one helps.
        "no_payment_method",
    }
)
# Renewals: the invoices dunning chases (a first invoice that fails leaves
# the subscription incomplete instead, and the member pays it on-session).
RENEWAL_REASONS = frozenset({"subscription_cycle", "subscription_update", "subscription_threshold"})


def _id_of(value: Any) -> Any:
    # An expanded object is a dict; we keep its id.
    return value.get("id") if isinstance(value, dict) else value


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _SubscriptionDetails(_Loose):
    subscription: str | None = None
    # Only when the subscription came expanded: its status and payment method then.
    subscription_status: str | None = None
    subscription_default_payment_method: str | None = None
    metadata: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _expanded_status(cls, data: Any) -> Any:
        if isinstance(data, dict):
            expanded = data.get("subscription")
            if isinstance(expanded, dict):
                data = {
                    **data,
                    "subscription_status": expanded.get("status"),
                    "subscription_default_payment_method": _id_of(
                        expanded.get("default_payment_method")
                    ),
                }
        return data

    @field_validator("subscription", mode="before")
    @classmethod
    def _subscription_id(cls, value: Any) -> Any:
        return _id_of(value)


class _Parent(_Loose):
    subscription_details: _SubscriptionDetails | None = None


class _PaymentError(_Loose):
    decline_code: str | None = None
    payment_method: str | None = None

    @field_validator("payment_method", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)


class _PaymentIntent(_Loose):
    last_payment_error: _PaymentError | None = None


class _Payment(_Loose):
    # Only an expanded PaymentIntent says how it failed; an id alone says nothing.
    payment_intent: _PaymentIntent | None = None

    @field_validator("payment_intent", mode="before")
    @classmethod
    def _expanded_only(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None


class _InvoicePayment(_Loose):
    created: int = 0
    payment: _Payment | None = None


class _InvoicePayments(_Loose):
    data: list[_InvoicePayment] = []


class Invoice(_Loose):
    id: str = Field(pattern=r"^in_")
    customer: str
    # Only when the customer came expanded: its default payment method for invoices.
    customer_default_payment_method: str | None = None
    default_payment_method: str | None = None
    # Only when asked for (``expand[]=payments...``): the invoice's payments.
    payments: _InvoicePayments | None = None
    status: str | None = None
    amount_due: int = 0
    amount_paid: int = 0
    amount_remaining: int = 0
    currency: str
    billing_reason: str | None = None
    customer_email: str | None = None
    hosted_invoice_url: str | None = None
    attempt_count: int = 0
    next_payment_attempt: int | None = None
    metadata: dict[str, str] | None = None
    parent: _Parent | None = None
    # Older API versions.
    subscription: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _expanded_customer(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("customer"), dict):
            settings = data["customer"].get("invoice_settings") or {}
            data = {
                **data,
                "customer_default_payment_method": _id_of(settings.get("default_payment_method")),
            }
        return data

    @field_validator("customer", "subscription", "default_payment_method", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)

    @property
    def hard_decline_of_next_payment(self) -> str | None:
        """The hard decline the invoice's last payment met, when paying it now would
        use that same payment method again (so it would be declined again); None
        otherwise, or when the answer did not carry the payments and the customer.

        The method Stripe charges is the invoice's, else the subscription's, else
        the customer's default for invoices, as ``/pay`` chooses it.
        """
        if self.payments is None:
            return None
        details = self.parent.subscription_details if self.parent else None
        method = (
            self.default_payment_method
            or (details.subscription_default_payment_method if details else None)
            or self.customer_default_payment_method
        )
        intents = [
            p.payment.payment_intent
            for p in sorted(self.payments.data, key=lambda p: p.created)
            if p.payment is not None and p.payment.payment_intent is not None
        ]
        error = intents[-1].last_payment_error if intents else None
        if method is None or error is None or error.payment_method != method:
            return None
        return error.decline_code if error.decline_code in HARD_DECLINES else None

    @property
    def subscription_id(self) -> str | None:
        details = self.parent.subscription_details if self.parent else None
        if details is not None and details.subscription:
            return details.subscription
        return self.subscription

    @property
    def subscription_status(self) -> str | None:
        """The status of ``subscription_id`` when the invoice came with it expanded.

        None when it did not (not asked for, or an older API version's
        top-level ``subscription``): the subscription must then be read.
        """
        details = self.parent.subscription_details if self.parent else None
        if details is not None and details.subscription:
            return details.subscription_status
        return None

    @property
    def user_id(self) -> str | None:
        """The product's user, when its subscription or invoice carries it in metadata."""
        details = self.parent.subscription_details if self.parent else None
        for metadata in (details.metadata if details else None, self.metadata):
            if metadata and metadata.get("user_id"):
                return metadata["user_id"]
        return None

    @property
    def is_renewal(self) -> bool:
        return self.subscription_id is not None and self.billing_reason in RENEWAL_REASONS


class Subscription(_Loose):
    id: str = Field(pattern=r"^sub_")
    status: str
    metadata: dict[str, str] | None = None


class PaymentMethod(_Loose):
    id: str
    customer: str | None = None

    @field_validator("customer", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)


class _InvoiceSettings(_Loose):
    default_payment_method: str | None = None

    @field_validator("default_payment_method", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _id_of(value)


class Customer(_Loose):
    id: str = Field(pattern=r"^cus_")
    invoice_settings: _InvoiceSettings | None = None


# Subscriptions Stripe never brings back: no charge for them.
ENDED_SUBSCRIPTIONS = frozenset({"canceled", "incomplete_expired"})


class DunningStripeEvent(StripeEvent):
    """A Stripe event on the retry service's queue; its object is read per type."""
