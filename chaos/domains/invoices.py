"""Subscription invoices as Stripe sends them, shared by the domains that own invoice events.

A renewal's invoice is paid (``invoice.paid``) or fails
(``invoice.payment_failed``, later ``invoice.paid`` when recovered, or
``invoice.voided`` when the subscription is canceled instead). Each invoice
names its subscription and repeats the subscription's metadata (the member's
user id and plan), as the product's subscriptions carry them.
"""

from __future__ import annotations

from typing import Any

from chaos.story import Customer, Step, StepKind
from chaos.stripe_events import stripe_object
from shared import catalog

CURRENCY = "usd"


def invoice_id(customer: Customer, step: Step) -> str:
    """The invoice of the renewal ``step`` made (a paid or a failed one)."""
    return f"in_{customer.subscription_id.removeprefix('sub_')}_{step.index:03d}"


def event_id(invoice: str, status: str) -> str:
    """The event that left ``invoice`` in ``status`` (open: its payment failed)."""
    return f"evt_{invoice}_{status}"


def invoice_of(event: str) -> str:
    return event.removeprefix("evt_").rsplit("_", 1)[0]


def email(customer: Customer) -> str:
    return f"{customer.user_id}@example.com"


def plan_key(lookup_key: str) -> str:
    """The catalog's plan of a monthly price's lookup key."""
    found = catalog.default().plan_for_price(lookup_key)
    assert found is not None, lookup_key
    return found[0]


def amount(lookup_key: str) -> int:
    plan = catalog.default().plans[plan_key(lookup_key)]
    price = plan.price("month", None)
    assert price is not None
    return price.amount


def failed_invoice_of(customer: Customer, step: Step) -> Step | None:
    """The renewal whose payment failed and is still unpaid when ``step`` happens."""
    unpaid = None
    for earlier in customer.steps[: customer.steps.index(step)]:
        if earlier.kind is StepKind.PAYMENT_FAILED:
            unpaid = earlier
        elif earlier.kind is StepKind.PAYMENT_RECOVERED:
            unpaid = None
    return unpaid


def invoice(
    customer: Customer, renewal: Step, *, status: str, at: int, attempt_count: int = 1
) -> dict[str, Any]:
    """The invoice of ``renewal`` (its period and plan) as it stands at ``at``."""
    total = amount(renewal.plan)
    paid = total if status == "paid" else 0
    obj = stripe_object(
        "invoice",
        id=invoice_id(customer, renewal),
        customer=customer.id,
        customer_email=email(customer),
        status=status,
        billing_reason="subscription_cycle",
        currency=CURRENCY,
        amount_due=total,
        amount_paid=paid,
        amount_remaining=total - paid if status == "open" else 0,
        total=total,
        subtotal=total,
        attempt_count=attempt_count,
        next_payment_attempt=None,
        period_start=renewal.period[0],
        period_end=renewal.period[1],
        created=renewal.at,
        hosted_invoice_url=None,
        subscription=None,
        metadata={},
        lines={"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/lines"},
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "subscription": customer.subscription_id,
                "metadata": {
                    "user_id": customer.user_id,
                    "plan": plan_key(renewal.plan),
                    "interval": "month",
                },
            },
        },
        status_transitions={
            "finalized_at": renewal.at,
            "paid_at": at if status == "paid" else None,
            "voided_at": at if status == "void" else None,
            "marked_uncollectible_at": None,
        },
    )
    return obj
