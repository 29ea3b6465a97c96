"""A payment's status, derived from what Stripe reported about its objects.

The payment intent (or the Checkout session before it) says pending,
processing, succeeded, failed, canceled or expired; the charge's refunds and
disputes then say partially refunded, refunded or disputed::

    pending -> processing -> succeeded | failed | canceled | expired
    succeeded -> partially_refunded -> refunded;  any paid state -> disputed

A failed payment stays failed for its bookings: the member pays again with a
new payment (the old intent is canceled first, see ``api.py``).
"""

from __future__ import annotations

from typing import Any

# Payments whose bookings are free to be paid again.
RELEASED = frozenset({"failed", "canceled", "expired"})
# A dispute in these states no longer holds the money.
DISPUTE_SETTLED = frozenset({"won", "warning_closed"})
# Final: a closed dispute never reopens (``prevented``: stopped before a
# chargeback was filed, the cardholder refunded through the network).
DISPUTE_CLOSED = frozenset({"won", "lost", "warning_closed", "prevented"})


def intent_status(pi: dict[str, Any]) -> str:
    """Our reading of a PaymentIntent's status."""
    status = pi.get("status")
    if status == "succeeded":
        return "succeeded"
    if status == "processing":
        return "processing"
    if status == "canceled":
        return "canceled"
    if status == "requires_payment_method" and pi.get("last_payment_error"):
        return "failed"
    return "pending"


def intent_progress(status: str) -> int:
    """What only moves forward, for shared/mirror.py (a retried failure may still succeed)."""
    return {"pending": 0, "failed": 1, "processing": 2, "succeeded": 3, "canceled": 3}.get(
        status, 0
    )


def overall(
    intent: str, amount_paid: int | None, amount_refunded: int, dispute_status: str | None
) -> str:
    if dispute_status is not None and dispute_status not in DISPUTE_SETTLED:
        return "disputed"
    if intent == "succeeded" and amount_refunded > 0:
        return "refunded" if amount_refunded >= (amount_paid or 0) else "partially_refunded"
    return intent


def live(status: str) -> bool:
    """Whether the payment holds its bookings."""
    return status not in RELEASED
