"""The domain events on ``billing.events``: a contract between services.

Every message is an envelope::

    {"id": "<uuid>", "type": "subscription.renewed", "schema_version": 1,
     "source": "subscriptions", "occurred_at": "<ISO 8601 UTC>", "data": {...}}

``id`` is stable (it is also the AMQP ``message_id``): the same fact is always
the same id, so a consumer dedupes by it. ``type`` is also the routing key.
``data`` is the model below for that type. A change that removes or
reinterprets a field is a new ``schema_version``; adding an optional field is
not. Producers write events through the transactional outbox
(``shared/outbox.py``), so an event exists if and only if its state change
committed. The README's "Domain events" section documents each type.

Money is integer minor units with a currency; times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

D = TypeVar("D", bound=BaseModel)

Interval = Literal["month", "year"]


class _Data(BaseModel):
    # Consumers ignore fields they do not know: producers may add optional ones.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Member(_Data):
    """Who the event is about."""

    user_id: str = Field(
        description="Empty only for a Stripe customer this product did not create."
    )
    customer_id: str = Field(description="The Stripe customer.")
    email: str | None = None


class Period(_Data):
    start: datetime
    end: datetime


class Plan(_Data):
    plan: str = Field(description="The catalog's plan key, e.g. `hot_desk`.")
    interval: Interval


# --- subscriptions ---------------------------------------------------------------


class SubscriptionActivated(_Data):
    """The member has access for the first time: the first invoice was paid, or a
    trial began. Credits are granted on this (trial credits for a trial), never on
    a subscription merely created."""

    member: Member
    subscription_id: str
    plan: Plan
    status: Literal["active", "trialing"]
    period: Period
    allotments: dict[str, int] = Field(description="Credits granted for this period, by type.")
    invoice_id: str | None = Field(description="The paid invoice; none for a trial.")
    trial_end: datetime | None = None


class SubscriptionRenewed(_Data):
    """An invoice was paid for a new period (a trial converting counts). Credits
    for the new period are granted on this."""

    member: Member
    subscription_id: str
    plan: Plan
    period: Period
    allotments: dict[str, int]
    invoice_id: str
    amount_paid: int
    currency: str


class SubscriptionChanged(_Data):
    """The plan or interval changed. An upgrade is effective at once (with
    proration); a downgrade at the period end (``effective_at``)."""

    member: Member
    subscription_id: str
    previous: Plan
    current: Plan
    previous_allotments: dict[str, int]
    current_allotments: dict[str, int]
    effective_at: datetime
    period: Period
    status: str | None = Field(
        default=None,
        description="The subscription's Stripe status after the change: `trialing` says"
        " `period` is its trial (the change grants the new plan's trial credits, not its"
        " allotments). None from producers that predate the field.",
    )


class SubscriptionTrialEnding(_Data):
    member: Member
    subscription_id: str
    plan: Plan
    trial_end: datetime


class SubscriptionPastDue(_Data):
    """A renewal failed; access lasts until ``grace_until``."""

    member: Member
    subscription_id: str
    invoice_id: str | None
    grace_until: datetime


class SubscriptionCancellationScheduled(_Data):
    """The member (or staff) set the subscription to end at the period end."""

    member: Member
    subscription_id: str
    plan: Plan
    cancel_at: datetime


class SubscriptionCanceled(_Data):
    """The subscription ended; no further grants or charges."""

    member: Member
    subscription_id: str
    plan: Plan | None
    ended_at: datetime
    reason: str | None = Field(
        default=None, description="Stripe's cancellation reason, when it gave one."
    )


# --- invoices --------------------------------------------------------------------


class InvoicePaid(_Data):
    member: Member
    invoice_id: str
    subscription_id: str | None
    amount_paid: int
    currency: str
    billing_reason: str | None
    period: Period | None
    hosted_invoice_url: str | None = None


class InvoicePaymentFailed(_Data):
    member: Member
    invoice_id: str
    subscription_id: str | None
    amount_due: int
    currency: str
    attempt_count: int
    billing_reason: str | None
    decline_code: str | None = None
    hosted_invoice_url: str | None = None


# --- one-time payments and charges ---------------------------------------------


class PaymentRef(_Data):
    """What a payment paid for: bookings, or a subscription invoice."""

    payment_id: str | None = Field(
        description="The payment's id in GET /v1/payments/{id} (bookings and invoices' charges)."
    )
    payment_intent_id: str | None
    charge_id: str | None = None
    booking_refs: list[str] = Field(default_factory=list)
    invoice_id: str | None = Field(default=None, description="Set for an invoice's charge.")
    subscription_id: str | None = None


class PaymentSucceeded(_Data):
    member: Member
    payment: PaymentRef
    amount: int
    currency: str
    products: dict[str, int] = Field(
        default_factory=dict, description="Catalog product -> quantity (credit packs...)."
    )


class PaymentFailed(_Data):
    member: Member
    payment: PaymentRef
    amount: int
    currency: str
    failure_code: str | None
    decline_code: str | None = None


class PaymentCanceled(_Data):
    """Canceled or expired before it was paid: the bookings are released."""

    member: Member
    payment: PaymentRef
    reason: str | None = None


class PaymentRefunded(_Data):
    member: Member
    payment: PaymentRef
    amount_refunded: int = Field(description="This refund.")
    total_refunded: int = Field(description="All refunds of the charge so far.")
    amount: int = Field(description="What was paid.")
    currency: str
    full: bool
    refund_id: str | None = None


class PaymentRefundFailed(_Data):
    """A refund announced by ``payment.refunded`` failed or was canceled: the
    member never got the money, and it counts as paid again."""

    member: Member
    payment: PaymentRef
    refund_id: str
    amount_refunded: int = Field(description="What the failed refund was for.")
    total_refunded: int = Field(description="All refunds of the charge still standing.")
    amount: int = Field(description="What was paid.")
    currency: str
    status: str = Field(description="Stripe's refund status: `failed` or `canceled`.")
    failure_reason: str | None = None


class PaymentDisputed(_Data):
    member: Member
    payment: PaymentRef
    dispute_id: str
    amount: int
    currency: str
    reason: str | None
    status: str


# A closed dispute in these states left the money with the business: what the
# dispute took back is owed to the member again. Any other (`lost`,
# `prevented`) left it with the cardholder.
DISPUTE_WON = frozenset({"won", "warning_closed"})


class PaymentDisputeClosed(_Data):
    """A dispute closed (once per dispute): ``status`` in ``DISPUTE_WON`` the
    business keeps the money, otherwise the cardholder has it."""

    member: Member
    payment: PaymentRef
    dispute_id: str
    amount: int
    currency: str
    reason: str | None
    status: str = Field(description="`won`, `warning_closed` (kept); `lost`, `prevented`.")


# --- dunning -------------------------------------------------------------------------


class DunningAttemptFailed(_Data):
    member: Member
    invoice_id: str
    subscription_id: str | None
    attempt: int
    amount: int
    currency: str
    decline_code: str | None
    next_attempt_at: datetime | None = Field(description="None: no automatic attempt is due.")
    paused: bool = Field(description="A hard decline: waiting for a new payment method.")
    update_payment_method_url: str | None = None


class DunningRecovered(_Data):
    member: Member
    invoice_id: str
    subscription_id: str | None
    amount: int
    currency: str
    attempts: int


class DunningExhausted(_Data):
    member: Member
    invoice_id: str
    subscription_id: str | None
    attempts: int
    end_action: Literal["cancel_subscription", "mark_uncollectible", "leave_past_due"]


EVENTS: dict[str, type[_Data]] = {
    "subscription.activated": SubscriptionActivated,
    "subscription.renewed": SubscriptionRenewed,
    "subscription.changed": SubscriptionChanged,
    "subscription.trial_ending": SubscriptionTrialEnding,
    "subscription.past_due": SubscriptionPastDue,
    "subscription.cancellation_scheduled": SubscriptionCancellationScheduled,
    "subscription.canceled": SubscriptionCanceled,
    "invoice.paid": InvoicePaid,
    "invoice.payment_failed": InvoicePaymentFailed,
    "payment.succeeded": PaymentSucceeded,
    "payment.failed": PaymentFailed,
    "payment.canceled": PaymentCanceled,
    "payment.refunded": PaymentRefunded,
    "payment.refund_failed": PaymentRefundFailed,
    "payment.disputed": PaymentDisputed,
    "payment.dispute_closed": PaymentDisputeClosed,
    "dunning.attempt_failed": DunningAttemptFailed,
    "dunning.recovered": DunningRecovered,
    "dunning.exhausted": DunningExhausted,
}


class DomainEvent(BaseModel, Generic[D]):
    """The envelope, as a consumer reads it (``shared/broker/handlers.py`` models)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: str
    schema_version: int
    source: str
    occurred_at: datetime
    data: D


def model_for(event_type: str) -> type[_Data]:
    return EVENTS[event_type]


def describe() -> dict[str, Any]:
    """Each type's JSON schema (for the README and for consumers in other languages)."""
    return {name: model.model_json_schema() for name, model in EVENTS.items()}
