"""Names of the product's consumer queues: part of the messaging contract.

Queue names are shared (the webhooks service inspects every dead-letter
queue); bindings and handlers stay with the service that owns the queue.
"""

from __future__ import annotations

WEBHOOKS_LEDGER = "webhooks.ledger"
SUBSCRIPTIONS_STRIPE = "subscriptions.stripe-events"
SUBSCRIPTIONS_PAYMENTS = "subscriptions.payments"
CREDITS_BILLING = "credits.billing-events"
RETRY_STRIPE = "retry.stripe-events"
# billing.events -> member emails (a module of the retry service).
RETRY_NOTIFICATIONS = "retry.notifications"

ALL = (
    WEBHOOKS_LEDGER,
    SUBSCRIPTIONS_STRIPE,
    SUBSCRIPTIONS_PAYMENTS,
    CREDITS_BILLING,
    RETRY_STRIPE,
    RETRY_NOTIFICATIONS,
)
